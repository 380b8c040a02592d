divert(-1)
dnl kube-drac: POP-before-SMTP for sendmail, failing closed. Clients with a live RelayGrant may
dnl relay; the grants are read from the kube-drac bridge's socket map.
dnl
dnl Install as cf/hack/kube-drac.m4 (Debian: /usr/share/sendmail/cf/hack/) and add this line to
dnl sendmail.mc before the mailer lines, with the socket map's address as the argument
dnl (default inet:9400@127.0.0.1):
dnl
dnl	HACK(`kube-drac', `inet:9400@kube-drac-bridge.mail.svc')
dnl
dnl README.md next to this file says why classic DRAC's ruleset must not be used over a socket
dnl map. Note for editors: sendmail's m4 expands macro names even in # comments, so the
dnl comments below name no macro.
divert(0)
VERSIONID(`kube-drac fail-closed relay ruleset')
divert(-1)

define(`_KUBE_DRAC_MAP_', ifelse(_ARG_, `', `inet:9400@127.0.0.1', `_ARG_'))

LOCAL_CONFIG
# kube-drac RelayGrants through the bridge's socket map. With -T<TMPF>, a TEMP or TIMEOUT reply,
# or a bridge that cannot be reached, gives back the key with <TMPF> appended.
Kdrac socket -T<TMPF> _KUBE_DRAC_MAP_

LOCAL_RULESETS
SLocal_check_rcpt
# workspace: recipient $| client address (empty for local submissions: nothing to decide)
R$*			$: $1 $| $&{client_addr}
R$* $|			$@ ?
R$* $| $+		$: $1 $| $(drac $2 $: ? $)
# The map could not answer: defer what would need relaying; local and relay-domain recipients go
# on to the usual checks (a bridge outage must not stop inbound mail).
R$* $| $* <TMPF>	$: <TMPF> $>CanonAddr $1
R<TMPF> $* < @ $=w . > $*	$@ ?
R<TMPF> $* < @ $=w > $*		$@ ?
R<TMPF> $* < @ $* $=R . > $*	$@ ?
R<TMPF> $* < @ $* $=R > $*	$@ ?
R<TMPF> $* < @ $+ > $*	$#error $@ 4.3.0 $: "451 Relay authorization temporarily unavailable, try again later"
R<TMPF> $*		$@ ?
# NOTFOUND: the usual checks decide (relaying is refused there).
R$* $| ?		$@ ?
# OK <expiry>: the value is one all-digit token. Anything else grants nothing.
R$* $| $-		$@ $#OK
R$*			$@ ?
