{{/* Names of the chart's objects: <namePrefix>-operator, <namePrefix>-agent, ... */}}
{{- define "podmig.operator" -}}{{ .Values.namePrefix }}-operator{{- end }}
{{- define "podmig.agent" -}}{{ .Values.namePrefix }}-agent{{- end }}
{{- define "podmig.webhooks" -}}{{ .Values.namePrefix }}-operator-webhooks{{- end }}

{{/* Labels every object carries. */}}
{{- define "podmig.labels" -}}
app.kubernetes.io/part-of: pod-migration
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "podmig.operatorImage" -}}
{{ printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "podmig.agentImage" -}}
{{ printf "%s:%s" .Values.agent.image.repository (default .Chart.AppVersion .Values.agent.image.tag) }}
{{- end }}
