using Migrate.TestSupport.Helm;
using Xunit;

namespace Migrate.Install.Tests;

/// <summary>The chart renderer keeps Go's text/template semantics where the chart depends on them.</summary>
public sealed class GoTemplateTests
{
    private static string Run(string template, string valuesYaml = "{}")
    {
        var set = new GoTemplateSet();
        set.Add("t", template);
        return set.Execute("t", new Dictionary<string, object?> { ["Values"] = GoYaml.Parse(valuesYaml) });
    }

    [Fact]
    public void Trim_markers_eat_whitespace_and_newlines_on_their_side_only()
    {
        Assert.Equal("a:bc", Run("a:  \n  {{- \"b\" }}\n{{- /* gone */ -}}\n   \nc"));
        Assert.Equal("a:b\ncd", Run("a:  \n  {{- \"b\" }}\n{{ \"c\" -}}\n  d"));
    }

    [Fact]
    public void Braces_inside_a_quoted_string_do_not_close_the_action_as_in_go_s_lexer()
    {
        // the idiom that writes Prometheus alert templates from a chart
        Assert.Equal("{{ $value }} and }}", Run("{{ \"{{\" }} $value {{ \"}}\" }} and {{ `}}` }}"));
        Assert.Throws<TemplateException>(() => Run("{{ \"}} "));
    }

    [Fact]
    public void Conditions_follow_go_truthiness_and_else_if_chains()
    {
        const string template = "{{ if .Values.a }}A{{ else if .Values.b }}B{{ else }}C{{ end }}";
        Assert.Equal("A", Run(template, "a: [1]"));
        Assert.Equal("B", Run(template, "a: []\nb: x"));
        Assert.Equal("C", Run(template, "a: 0\nb: \"\""));
        Assert.Equal("C", Run(template, "b: {}"));
    }

    [Fact]
    public void A_missing_key_is_nil_but_a_field_of_nil_is_an_error_as_in_helm()
    {
        Assert.Equal("[]", Run("[{{ .Values.missing }}]"));
        var error = Assert.Throws<TemplateException>(() => Run("{{ .Values.missing.deeper }}"));
        Assert.Contains("nil pointer evaluating interface {}.deeper", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Numbers_from_values_print_as_go_floats_unless_converted()
    {
        Assert.Equal("8081 1e+06 1000000 \"1048576\"", Run("{{ .Values.a }} {{ .Values.b }} {{ .Values.b | int64 }} {{ .Values.c | int64 | quote }}", "a: 8081\nb: 1000000\nc: 1048576"));
    }

    [Fact]
    public void Range_with_define_include_and_pipelines_work_together()
    {
        const string template = """
            {{- define "item" }}- {{ . | quote }}{{ end -}}
            {{- range .Values.list }}
            {{ include "item" . }}
            {{- end }}
            {{- with .Values.map }}
            {{ toYaml . | nindent 2 }}
            {{- end }}
            {{ printf "%s-%d" "x" 3 }} {{ default "d" .Values.none }} {{ .Values.none | default "e" }}
            """;
        Assert.Equal("\n- \"a\"\n- \"b\"\n\n  k: v\n  z: 1\nx-3 d e", Run(template, "list: [a, b]\nmap: {z: 1, k: v}"));
    }

    [Fact]
    public void Unknown_functions_and_unclosed_blocks_are_errors_not_silence()
    {
        Assert.Contains("function \"sha256sum\" not defined", Assert.Throws<TemplateException>(() => Run("{{ sha256sum \"x\" }}")).Message, StringComparison.Ordinal);
        Assert.Contains("if without end", Assert.Throws<TemplateException>(() => Run("{{ if true }}x")).Message, StringComparison.Ordinal);
        Assert.Contains("required!", Assert.Throws<TemplateException>(() => Run("{{ required \"required!\" .Values.x }}")).Message, StringComparison.Ordinal);
    }
}
