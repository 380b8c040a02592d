{{/*
The config file of each role: the common sections plus the role's own section. The chart sets
the keys tied to the pod layout (ports, mounted files, paths); `<role>.config` adds the rest.
Every key rendered here must be a key the role's parser knows (test/chart checks it).
*/}}
{{- define "kube-drac.config.common" -}}
grants:
  ttl: {{ .Values.grants.ttl | quote }}
  renewInterval: {{ .Values.grants.renewInterval | quote }}
  ipv6PrefixLength: {{ int .Values.grants.ipv6PrefixLength }}
metrics:
  host: {{ .Values.listenHost | quote }}
  port: {{ int .Values.metrics.port }}
log:
  level: {{ .Values.log.level }}
{{- end -}}

{{- define "kube-drac.config.tlsFiles" -}}
certFile: /etc/kube-drac/tls/tls.crt
keyFile: /etc/kube-drac/tls/tls.key
{{- end -}}

{{- define "kube-drac.config.pop3" -}}
{{- $fixed := dict
  "listen" (dict "host" .Values.listenHost "port" 1110)
  "tls" (include "kube-drac.config.tlsFiles" . | fromYaml)
  "tlsPort" 1995
  "mailRoot" "/var/mail/kube-drac"
  "mailLocation" .Values.mail.location
  "usersFile" (printf "/etc/kube-drac/users/%s" .Values.users.key)
-}}
{{- if .Values.proxyProtocol.enabled }}
{{- $_ := set $fixed "trustedProxies" .Values.proxyProtocol.trustedCIDRs }}
{{- end }}
{{- include "kube-drac.config.common" . }}
pop3:
  {{- merge $fixed (deepCopy .Values.pop3.config) | toYaml | nindent 2 }}
{{- end -}}

{{- define "kube-drac.config.smtp" -}}
{{- $smarthost := dict
  "host" .Values.smtp.smarthost.host
  "secure" .Values.smtp.smarthost.secure
  "requireTLS" .Values.smtp.smarthost.requireTLS
  "verifyCertificate" .Values.smtp.smarthost.verifyCertificate
-}}
{{- if .Values.smtp.smarthost.port }}
{{- $_ := set $smarthost "port" (int .Values.smtp.smarthost.port) }}
{{- end }}
{{- if .Values.smtp.smarthost.auth.enabled }}
{{- $_ := set $smarthost "auth" (dict "user" .Values.smtp.smarthost.auth.user "passwordFile" (printf "/etc/kube-drac/smarthost/%s" .Values.smtp.smarthost.auth.key)) }}
{{- end }}
{{- $fixed := dict
  "listen" (dict "host" .Values.listenHost "port" 2525)
  "tls" (include "kube-drac.config.tlsFiles" . | fromYaml)
  "localDomains" .Values.smtp.localDomains
  "mailRoot" "/var/mail/kube-drac"
  "mailLocation" .Values.mail.location
  "usersFile" (printf "/etc/kube-drac/users/%s" .Values.users.key)
  "trustedNetworks" .Values.smtp.trustedNetworks
  "smarthost" $smarthost
  "auth" (dict "enabled" .Values.smtp.auth.enabled)
-}}
{{- if .Values.smtp.hostname }}
{{- $_ := set $fixed "hostname" .Values.smtp.hostname }}
{{- end }}
{{- if .Values.smtp.implicitTls.enabled }}
{{- $_ := set $fixed "implicitTlsPort" 2465 }}
{{- end }}
{{- if .Values.proxyProtocol.enabled }}
{{- $_ := set $fixed "trustedProxies" .Values.proxyProtocol.trustedCIDRs }}
{{- end }}
{{- include "kube-drac.config.common" . }}
smtp:
  {{- merge $fixed (deepCopy .Values.smtp.config) | toYaml | nindent 2 }}
{{- end -}}

{{- define "kube-drac.config.operator" -}}
{{- include "kube-drac.config.common" . }}
operator:
  grace: {{ .Values.operator.grace | quote }}
  sweepInterval: {{ .Values.operator.sweepInterval | quote }}
  deleteConcurrency: {{ int .Values.operator.deleteConcurrency }}
  leaderElection:
    leaseName: {{ include "kube-drac.leaseName" . }}
    leaseDuration: {{ .Values.operator.leaderElection.leaseDuration | quote }}
    renewDeadline: {{ .Values.operator.leaderElection.renewDeadline | quote }}
    retryPeriod: {{ .Values.operator.leaderElection.retryPeriod | quote }}
{{- end -}}
