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

{{/* The login guards shared by pop3 and smtp, when set (else the roles' defaults, or pop3's old throttle keys). */}}
{{- define "kube-drac.config.login" -}}
{{- with .Values.login }}
login:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "kube-drac.config.tlsFiles" -}}
certFile: /etc/kube-drac/tls/tls.crt
keyFile: /etc/kube-drac/tls/tls.key
{{- end -}}

{{- define "kube-drac.config.pop3" -}}
{{- $fixed := dict
  "listen" (dict "host" .Values.listenHost "port" 1110)
  "tls" (include "kube-drac.config.tlsFiles" . | fromYaml)
  "implicitTlsPort" 1995
  "mailRoot" "/var/mail/kube-drac"
  "mailLocation" .Values.mail.location
  "usersFile" (printf "/etc/kube-drac/users/%s" .Values.users.key)
-}}
{{- if .Values.proxyProtocol.enabled }}
{{- $_ := set $fixed "trustedProxies" .Values.proxyProtocol.trustedCIDRs }}
{{- end }}
{{- include "kube-drac.config.common" . }}
{{- include "kube-drac.config.login" . }}
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
{{- if .Values.limits.enabled }}
{{- $l := .Values.limits }}
{{- $_ := set $fixed "limits" (dict "enabled" true "flushInterval" $l.flushInterval "perUser" $l.perUser "perAddress" $l.perAddress "overrides" $l.overrides) }}
{{- end }}
{{- include "kube-drac.config.common" . }}
{{- include "kube-drac.config.login" . }}
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

{{/*
The bridge: only the enabled listeners, each on its container port, every one admitting
loopback plus bridge.allow. dracd.allow lines and the API key are mounted files.
*/}}
{{- define "kube-drac.config.bridge" -}}
{{- $b := .Values.bridge -}}
{{- $section := dict "host" .Values.listenHost "allow" (concat (list "127.0.0.0/8" "::1/128") $b.allow) -}}
{{- if $b.socketmap.enabled }}
{{- $_ := set $section "socketmap" (dict "enabled" true "port" (int $b.socketmap.port) "mapName" $b.socketmap.mapName) }}
{{- end }}
{{- if $b.policy.enabled }}
{{- $_ := set $section "policy" (dict "enabled" true "port" (int $b.policy.port)) }}
{{- end }}
{{- if $b.whoson.enabled }}
{{- $_ := set $section "whoson" (dict "enabled" true "port" (int $b.whoson.port) "udp" $b.whoson.udp) }}
{{- end }}
{{- if $b.drac.enabled }}
{{- $drac := dict "enabled" true "port" (int $b.drac.port) "portmapper" (dict "enabled" $b.drac.portmapper.enabled) }}
{{- if $b.drac.portmapper.enabled }}
{{- $_ := set $drac.portmapper "port" 1111 }}
{{- end }}
{{- if $b.drac.allowLines }}
{{- $_ := set $drac "allowFile" "/etc/kube-drac/config/dracd.allow" }}
{{- end }}
{{- $_ := set $section "drac" $drac }}
{{- end }}
{{- if $b.authPolicy.enabled }}
{{- $_ := set $section "authPolicy" (dict "enabled" true "port" (int $b.authPolicy.port) "apiHeaderName" $b.authPolicy.apiHeaderName "apiKeyFile" (printf "/etc/kube-drac/bridge/%s" $b.authPolicy.key)) }}
{{- end }}
{{- include "kube-drac.config.common" . }}
bridge:
  {{- $section | toYaml | nindent 2 }}
{{- end -}}

{{/* dracd.allow as classic DRAC reads it: `netmask netaddr` lines. */}}
{{- define "kube-drac.config.dracdAllow" -}}
# dracd.allow rendered by the kube-drac chart (bridge.drac.allowLines)
{{- range .Values.bridge.drac.allowLines }}
{{ . }}
{{- end }}
{{- end -}}
