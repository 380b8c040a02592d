// The trace header we add to every accepted message (RFC 5321 4.4), saying how relay was authorized.

/** RFC 5322 date-time in UTC: `Sat, 28 Nov 2026 10:24:04 +0000`. */
export function rfc5322Date(ms: number): string {
  return new Date(ms).toUTCString().replace(/GMT$/, '+0000');
}

/** Text from the client that goes into a header: printable ASCII only, no comment delimiters. */
function clean(text: string, max = 255, allowSpace = false): string {
  let out = '';
  for (const ch of text) {
    const c = ch.codePointAt(0) as number;
    if ((c > 0x20 || (allowSpace && c === 0x20)) && c < 0x7f && ch !== '(' && ch !== ')' && ch !== '\\' && ch !== ';') out += ch;
    if (out.length >= max) break;
  }
  return out || 'unknown';
}

export interface ReceivedInfo {
  /** HELO/EHLO argument as given by the client. */
  helo: string | false;
  clientAddress: string;
  /** Our host name. */
  by: string;
  /** `ESMTP`, `ESMTPS`, `ESMTPSA`... */
  protocol: string;
  id: string;
  /** How the relay was authorized (`pop-before-smtp grant v4-...`), or local delivery. */
  authorization: string;
  /** Named in the header only for a single recipient (privacy of Bcc recipients otherwise). */
  recipients: string[];
  nowMs: number;
}

export function receivedHeader(info: ReceivedInfo): string {
  const addr = info.clientAddress.includes(':') ? `IPv6:${info.clientAddress}` : info.clientAddress;
  const lines = [
    `Received: from ${clean(info.helo || 'unknown')} ([${addr}])`,
    `\tby ${clean(info.by)} (kube-drac) with ${clean(info.protocol)} id ${clean(info.id)}`,
    `\t(authorized: ${clean(info.authorization, 200, true)})`,
  ];
  const forPart = info.recipients.length === 1 ? `\tfor <${clean(info.recipients[0] as string)}>; ` : '\t';
  lines.push(`${forPart}${rfc5322Date(info.nowMs)}`);
  return `${lines.join('\r\n')}\r\n`;
}
