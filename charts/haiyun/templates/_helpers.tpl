{{/* Names and labels shared by every object of the chart. */}}
{{- define "haiyun.name" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "haiyun.labels" -}}
app.kubernetes.io/name: haiyun
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "haiyun.selector" -}}
app.kubernetes.io/name: haiyun
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "haiyun.agentName" -}}
{{- printf "%s-agent" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* An image reference: a repository with no "/" is a name under .Values.imageRegistry. Call with
(dict "image" .Values.x.image "root" $). */}}
{{- define "haiyun.image" -}}
{{- $repo := .image.repository -}}
{{- if not (contains "/" $repo) -}}
{{- $repo = printf "%s/%s" (.root.Values.imageRegistry | trimSuffix "/") $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
