using System.Globalization;
using System.Text;

namespace Migrate.TestSupport.Helm;

/// <summary>A template failed to parse or execute, with the template's name.</summary>
public sealed class TemplateException(string message) : Exception(message);

/// <summary>
/// The part of Go's text/template (and of the Sprig functions Helm adds) that the chart uses, with
/// Go's semantics where they differ from the obvious: whitespace trimming by <c>{{-</c> and
/// <c>-}}</c>, truthiness (false, 0, nil and empty are false), a field of a missing map key is
/// nil but a field of nil is an error, numbers from values are floats printed as Go prints them
/// (1e+06), and <c>include</c>/<c>define</c>. No helm binary can be installed on these machines;
/// this lets the tests render the chart. Anything outside the subset is an error, never ignored.
/// </summary>
public sealed class GoTemplateSet
{
    private readonly Dictionary<string, List<Node>> _defined = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<Node>> _files = new(StringComparer.Ordinal);

    /// <summary>Parses a file; its <c>define</c>s become visible to every file of the set.</summary>
    public void Add(string name, string text) => _files[name] = new Parser(name, text, _defined).ParseAll();

    public string Execute(string name, object? data)
    {
        if (!_files.TryGetValue(name, out var nodes))
        {
            throw new TemplateException($"no template file {name}");
        }

        var output = new StringBuilder();
        new Executor(this, name, data).Run(nodes, data, output, []);
        return output.ToString();
    }

    // ---- syntax tree ----

    private abstract record Node;

    private sealed record TextNode(string Text) : Node;

    private sealed record ActionNode(Pipeline Pipeline) : Node;

    private sealed record IfNode(List<(Pipeline Condition, List<Node> Body)> Branches, List<Node>? Else) : Node;

    private sealed record WithNode(Pipeline Value, List<Node> Body, List<Node>? Else) : Node;

    private sealed record RangeNode(Pipeline Value, List<Node> Body, List<Node>? Else) : Node;

    private sealed record TemplateNode(string Name, Pipeline? Data) : Node;

    private sealed record Pipeline(List<string> Declarations, List<List<Operand>> Commands);

    private abstract record Operand;

    private sealed record FieldOperand(string? Variable, List<string> Fields) : Operand; // Variable null: the dot

    private sealed record LiteralOperand(object? Value) : Operand;

    private sealed record FunctionOperand(string Name) : Operand;

    private sealed record SubPipelineOperand(Pipeline Pipeline, List<string> Fields) : Operand;

    // ---- parsing ----

    private sealed class Parser(string name, string text, Dictionary<string, List<Node>> defined)
    {
        private readonly List<(bool IsAction, string Text, int Line)> _tokens = [];
        private int _position;

        public List<Node> ParseAll()
        {
            Lex();
            var nodes = ParseList(out var end);
            if (end is not null)
            {
                throw Error($"unexpected {{{{{end}}}}}");
            }

            return nodes;
        }

        private TemplateException Error(string message, int? line = null) =>
            new($"template {name}:{line ?? (_position > 0 && _position <= _tokens.Count ? _tokens[_position - 1].Line : 1)}: {message}");

        private void Lex()
        {
            int i = 0, line = 1;
            var pending = new StringBuilder();
            while (i < text.Length)
            {
                int open = text.IndexOf("{{", i, StringComparison.Ordinal);
                if (open < 0)
                {
                    pending.Append(text, i, text.Length - i);
                    break;
                }

                pending.Append(text, i, open - i);
                int close = CloseOf(text, open + 2);
                if (close < 0)
                {
                    throw Error("unclosed action", line);
                }

                var inner = text[(open + 2)..close];
                bool trimLeft = inner.StartsWith("- ", StringComparison.Ordinal) || inner == "-" || inner.StartsWith("-\n", StringComparison.Ordinal);
                bool trimRight = inner.EndsWith(" -", StringComparison.Ordinal) || inner.EndsWith("\n-", StringComparison.Ordinal);
                if (trimLeft)
                {
                    inner = inner[1..];
                }

                if (trimRight)
                {
                    inner = inner[..^1];
                }

                var before = pending.ToString();
                _tokens.Add((false, trimLeft ? before.TrimEnd() : before, line));
                line += text.AsSpan(i, open - i).Count('\n');
                pending.Clear();
                var action = inner.Trim();
                if (!(action.StartsWith("/*", StringComparison.Ordinal) && action.EndsWith("*/", StringComparison.Ordinal)))
                {
                    _tokens.Add((true, action, line));
                }

                line += inner.AsSpan().Count('\n');
                i = close + 2;
                if (trimRight)
                {
                    while (i < text.Length && char.IsWhiteSpace(text[i]))
                    {
                        line += text[i] == '\n' ? 1 : 0;
                        i++;
                    }
                }
            }

            _tokens.Add((false, pending.ToString(), line));
        }

        /// <summary>
        /// Where the action opened before <paramref name="from"/> closes: the first <c>}}</c> outside a
        /// quoted string, raw string or character constant (as Go's lexer reads it, so that
        /// <c>{{ "}}" }}</c> prints braces); -1 when it never closes.
        /// </summary>
        private static int CloseOf(string text, int from)
        {
            var start = text.AsSpan(from).TrimStart("- ");
            if (start.StartsWith("/*", StringComparison.Ordinal))
            {
                // a comment runs to "*/" whatever it holds
                int endOfComment = text.IndexOf("*/", text.Length - start.Length + 2, StringComparison.Ordinal);
                return endOfComment < 0 ? -1 : text.IndexOf("}}", endOfComment + 2, StringComparison.Ordinal);
            }

            for (int i = from; i < text.Length - 1; i++)
            {
                char c = text[i];
                if (c is '"' or '\'' or '`')
                {
                    for (i++; i < text.Length && text[i] != c; i++)
                    {
                        if (c != '`' && text[i] == '\\')
                        {
                            i++;
                        }
                    }
                }
                else if (c == '}' && text[i + 1] == '}')
                {
                    return i;
                }
            }

            return -1;
        }

        /// <summary>Nodes up to an {{end}}, {{else…}} (returned in <paramref name="end"/>) or the end of the file (null).</summary>
        private List<Node> ParseList(out string? end)
        {
            var nodes = new List<Node>();
            while (_position < _tokens.Count)
            {
                var (isAction, content, line) = _tokens[_position++];
                if (!isAction)
                {
                    if (content.Length > 0)
                    {
                        nodes.Add(new TextNode(content));
                    }

                    continue;
                }

                var words = content.Split((char[]?)null, 2, StringSplitOptions.RemoveEmptyEntries);
                var keyword = words.Length > 0 ? words[0] : "";
                var rest = words.Length > 1 ? words[1] : "";
                switch (keyword)
                {
                    case "end":
                    case "else":
                        end = content;
                        return nodes;
                    case "if":
                        nodes.Add(ParseIf(rest, line));
                        break;
                    case "with":
                    case "range":
                    {
                        var value = new ActionParser(rest, name, line).ParsePipeline(allowDeclarations: true);
                        var body = ParseList(out var close);
                        List<Node>? otherwise = null;
                        if (close == "else")
                        {
                            otherwise = ParseList(out close);
                        }

                        if (close != "end")
                        {
                            throw Error($"{keyword} without end", line);
                        }

                        nodes.Add(keyword == "with" ? new WithNode(value, body, otherwise) : new RangeNode(value, body, otherwise));
                        break;
                    }

                    case "define":
                    {
                        var defineName = new ActionParser(rest, name, line).ParseStringOnly();
                        var body = ParseList(out var close);
                        if (close != "end")
                        {
                            throw Error("define without end", line);
                        }

                        defined[defineName] = body;
                        break;
                    }

                    case "template":
                    {
                        var parser = new ActionParser(rest, name, line);
                        var templateName = parser.ParseString();
                        nodes.Add(new TemplateNode(templateName, parser.AtEnd ? null : parser.ParsePipeline(allowDeclarations: false)));
                        break;
                    }

                    case "block" or "break" or "continue":
                        throw Error($"{keyword} is not supported by this renderer", line);
                    default:
                        nodes.Add(new ActionNode(new ActionParser(content, name, line).ParsePipeline(allowDeclarations: true)));
                        break;
                }
            }

            end = null;
            return nodes;
        }

        private IfNode ParseIf(string condition, int line)
        {
            var branches = new List<(Pipeline, List<Node>)>();
            var current = new ActionParser(condition, name, line).ParsePipeline(allowDeclarations: false);
            while (true)
            {
                var body = ParseList(out var close);
                branches.Add((current, body));
                if (close == "end")
                {
                    return new IfNode(branches, null);
                }

                if (close == "else")
                {
                    var otherwise = ParseList(out close);
                    return close == "end" ? new IfNode(branches, otherwise) : throw Error("if without end", line);
                }

                if (close is not null && close.StartsWith("else if ", StringComparison.Ordinal))
                {
                    current = new ActionParser(close["else if ".Length..], name, line).ParsePipeline(allowDeclarations: false);
                    continue;
                }

                throw Error("if without end", line);
            }
        }
    }

    /// <summary>Parses the inside of one action: a pipeline of commands.</summary>
    private sealed class ActionParser(string text, string file, int line)
    {
        private int _i;

        public bool AtEnd
        {
            get
            {
                SkipSpace();
                return _i >= text.Length;
            }
        }

        private TemplateException Error(string message) => new($"template {file}:{line}: {message} in {{{{{text}}}}}");

        private void SkipSpace()
        {
            while (_i < text.Length && char.IsWhiteSpace(text[_i]))
            {
                _i++;
            }
        }

        public string ParseStringOnly()
        {
            var value = ParseString();
            return AtEnd ? value : throw Error("unexpected text after the name");
        }

        public string ParseString()
        {
            SkipSpace();
            return _i < text.Length && text[_i] is '"' or '`' ? ReadString() : throw Error("expected a quoted name");
        }

        public Pipeline ParsePipeline(bool allowDeclarations, bool nested = false)
        {
            var declarations = new List<string>();
            if (allowDeclarations)
            {
                int save = _i;
                var variables = new List<string>();
                while (true)
                {
                    SkipSpace();
                    if (_i < text.Length && text[_i] == '$')
                    {
                        variables.Add(ReadIdentifier(startAt: _i + 1, prefix: "$"));
                        SkipSpace();
                        if (_i < text.Length && text[_i] == ',')
                        {
                            _i++;
                            continue;
                        }

                        if (text.AsSpan(_i).StartsWith(":="))
                        {
                            _i += 2;
                            declarations = variables;
                        }
                    }

                    break;
                }

                if (declarations.Count == 0)
                {
                    _i = save;
                }
            }

            var commands = new List<List<Operand>>();
            var command = new List<Operand>();
            while (true)
            {
                SkipSpace();
                if (_i >= text.Length || (nested && text[_i] == ')'))
                {
                    break;
                }

                if (text[_i] == '|')
                {
                    _i++;
                    commands.Add(command.Count > 0 ? command : throw Error("empty command"));
                    command = [];
                    continue;
                }

                command.Add(ParseOperand());
            }

            if (command.Count == 0)
            {
                throw Error("missing value");
            }

            commands.Add(command);
            return new Pipeline(declarations, commands);
        }

        private Operand ParseOperand()
        {
            char c = text[_i];
            if (c == '(')
            {
                _i++;
                var inner = ParsePipeline(allowDeclarations: false, nested: true);
                if (_i >= text.Length || text[_i] != ')')
                {
                    throw Error("unclosed (");
                }

                _i++;
                return new SubPipelineOperand(inner, ReadFields());
            }

            if (c == '"' || c == '`')
            {
                return new LiteralOperand(ReadString());
            }

            if (c == '.')
            {
                if (_i + 1 >= text.Length || !IsIdentifierChar(text[_i + 1]))
                {
                    _i++;
                    return new FieldOperand(null, []);
                }

                return new FieldOperand(null, ReadFields());
            }

            if (c == '$')
            {
                var variable = ReadIdentifier(_i + 1, "$");
                return new FieldOperand(variable, ReadFields());
            }

            if (char.IsDigit(c) || ((c == '-' || c == '+') && _i + 1 < text.Length && char.IsDigit(text[_i + 1])))
            {
                int start = _i++;
                while (_i < text.Length && (char.IsLetterOrDigit(text[_i]) || text[_i] is '.' or '_'))
                {
                    _i++;
                }

                var literal = text[start.._i];
                return double.TryParse(literal, NumberStyles.Float, CultureInfo.InvariantCulture, out var number)
                    ? new LiteralOperand(number)
                    : throw Error($"bad number {literal}");
            }

            if (IsIdentifierChar(c))
            {
                var identifier = ReadIdentifier(_i, "");
                return identifier switch
                {
                    "true" => new LiteralOperand(true),
                    "false" => new LiteralOperand(false),
                    "nil" => new LiteralOperand(null),
                    _ => new FunctionOperand(identifier),
                };
            }

            throw Error($"unexpected '{c}'");
        }

        private static bool IsIdentifierChar(char c) => char.IsLetterOrDigit(c) || c == '_';

        private string ReadIdentifier(int startAt, string prefix)
        {
            _i = startAt;
            while (_i < text.Length && IsIdentifierChar(text[_i]))
            {
                _i++;
            }

            return prefix + text[startAt.._i];
        }

        private List<string> ReadFields()
        {
            var fields = new List<string>();
            while (_i + 1 < text.Length && text[_i] == '.' && IsIdentifierChar(text[_i + 1]))
            {
                fields.Add(ReadIdentifier(_i + 1, "")); // a field after ".": the identifier that follows
            }

            return fields;
        }

        private string ReadString()
        {
            char quote = text[_i++];
            var value = new StringBuilder();
            while (_i < text.Length && text[_i] != quote)
            {
                char c = text[_i++];
                if (quote == '"' && c == '\\' && _i < text.Length)
                {
                    char escaped = text[_i++];
                    value.Append(escaped switch { 'n' => '\n', 't' => '\t', '\\' => '\\', '"' => '"', _ => throw Error($"unsupported escape \\{escaped}") });
                }
                else
                {
                    value.Append(c);
                }
            }

            if (_i >= text.Length)
            {
                throw Error("unterminated string");
            }

            _i++;
            return value.ToString();
        }
    }

    // ---- execution ----

    private sealed class Executor(GoTemplateSet set, string file, object? root)
    {
        private int _depth;

        private TemplateException Error(string message) => new($"template {file}: {message}");

        public void Run(List<Node> nodes, object? dot, StringBuilder output, Dictionary<string, object?> variables)
        {
            var scope = new Dictionary<string, object?>(variables) { ["$"] = variables.GetValueOrDefault("$", root) };
            foreach (var node in nodes)
            {
                switch (node)
                {
                    case TextNode text:
                        output.Append(text.Text);
                        break;
                    case ActionNode action:
                    {
                        var value = Evaluate(action.Pipeline, dot, scope);
                        if (action.Pipeline.Declarations.Count == 0)
                        {
                            output.Append(Print(value));
                        }

                        break;
                    }

                    case IfNode branches:
                    {
                        var taken = branches.Branches.FirstOrDefault(b => Truthy(Evaluate(b.Condition, dot, scope)));
                        var body = taken.Body ?? branches.Else;
                        if (body is not null)
                        {
                            Run(body, dot, output, scope);
                        }

                        break;
                    }

                    case WithNode with:
                    {
                        var value = Evaluate(with.Value, dot, scope);
                        if (Truthy(value))
                        {
                            Run(with.Body, value, output, scope);
                        }
                        else if (with.Else is not null)
                        {
                            Run(with.Else, dot, output, scope);
                        }

                        break;
                    }

                    case RangeNode range:
                        RunRange(range, dot, output, scope);
                        break;
                    case TemplateNode template:
                        output.Append(Include(template.Name, template.Data is null ? null : Evaluate(template.Data, dot, scope)));
                        break;
                }
            }
        }

        private void RunRange(RangeNode range, object? dot, StringBuilder output, Dictionary<string, object?> scope)
        {
            var pipeline = range.Value with { Declarations = [] };
            var value = Evaluate(pipeline, dot, scope);
            var items = value switch
            {
                null => [],
                List<object?> list => list.Select((v, i) => ((object?)(double)i, v)).ToList(),
                Dictionary<string, object?> map => map.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => ((object?)p.Key, p.Value)).ToList(),
                _ => throw Error($"range can't iterate over {Describe(value)}"),
            };
            if (items.Count == 0)
            {
                if (range.Else is not null)
                {
                    Run(range.Else, dot, output, scope);
                }

                return;
            }

            foreach (var (key, item) in items)
            {
                var inner = new Dictionary<string, object?>(scope);
                var names = range.Value.Declarations;
                if (names.Count == 1)
                {
                    inner[names[0]] = item;
                }
                else if (names.Count == 2)
                {
                    inner[names[0]] = key;
                    inner[names[1]] = item;
                }

                Run(range.Body, item, output, inner);
            }
        }

        private object? Evaluate(Pipeline pipeline, object? dot, Dictionary<string, object?> scope)
        {
            object? value = null;
            bool piped = false;
            foreach (var command in pipeline.Commands)
            {
                value = EvaluateCommand(command, dot, scope, piped ? value : null, piped);
                piped = true;
            }

            foreach (var name in pipeline.Declarations)
            {
                scope[name] = value;
            }

            return value;
        }

        private object? EvaluateCommand(List<Operand> command, object? dot, Dictionary<string, object?> scope, object? input, bool piped)
        {
            if (command[0] is FunctionOperand function)
            {
                var args = command.Skip(1).Select(o => EvaluateOperand(o, dot, scope)).ToList();
                if (piped)
                {
                    args.Add(input);
                }

                return Call(function.Name, args);
            }

            if (command.Count > 1 || piped)
            {
                throw Error("can't give arguments to a value that is not a function");
            }

            return EvaluateOperand(command[0], dot, scope);
        }

        private object? EvaluateOperand(Operand operand, object? dot, Dictionary<string, object?> scope) => operand switch
        {
            LiteralOperand literal => literal.Value,
            FieldOperand field => Fields(field.Variable is null ? dot : scope.TryGetValue(field.Variable, out var v) ? v : throw Error($"undefined variable {field.Variable}"),
                field.Fields, field.Variable ?? ""),
            SubPipelineOperand sub => Fields(Evaluate(sub.Pipeline, dot, scope), sub.Fields, "(...)"),
            FunctionOperand function => Call(function.Name, []),
            _ => throw Error("unknown operand"),
        };

        private object? Fields(object? value, List<string> fields, string start)
        {
            var path = start;
            foreach (var field in fields)
            {
                path += "." + field;
                value = value switch
                {
                    Dictionary<string, object?> map => map.GetValueOrDefault(field),
                    null => throw Error($"nil pointer evaluating interface {{}}.{field} ({path})"),
                    _ => throw Error($"can't evaluate field {field} in {Describe(value)} ({path})"),
                };
            }

            return value;
        }

        private string Include(string name, object? data)
        {
            if (!set._defined.TryGetValue(name, out var body))
            {
                throw Error($"no template \"{name}\" associated with the chart");
            }

            if (++_depth > 100)
            {
                throw Error($"include of \"{name}\" nested too deeply");
            }

            var output = new StringBuilder();
            Run(body, data, output, new Dictionary<string, object?> { ["$"] = data });
            _depth--;
            return output.ToString();
        }

        private object? Call(string name, List<object?> a)
        {
            void Arity(int n)
            {
                if (a.Count != n)
                {
                    throw Error($"wrong number of args for {name}: want {n} got {a.Count}");
                }
            }

            switch (name)
            {
                case "include":
                    Arity(2);
                    return Include(AsString(a[0]), a[1]);
                case "toYaml":
                    Arity(1);
                    return GoYaml.Emit(a[0]).TrimEnd('\n');
                case "indent":
                case "nindent":
                {
                    Arity(2);
                    var pad = new string(' ', (int)AsNumber(a[0]));
                    var indented = pad + AsString(a[1]).Replace("\n", "\n" + pad, StringComparison.Ordinal);
                    return name == "nindent" ? "\n" + indented : indented;
                }

                case "quote":
                    return string.Join(" ", a.Where(v => v is not null).Select(v => "\"" + Print(v).Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal) + "\""));
                case "default":
                    Arity(2);
                    return Truthy(a[1]) ? a[1] : a[0];
                case "required":
                    Arity(2);
                    return a[1] is null || a[1] is "" ? throw Error(AsString(a[0])) : a[1];
                case "fail":
                    Arity(1);
                    throw Error(AsString(a[0]));
                case "eq":
                    return a.Skip(1).Any(b => Equal(a[0], b));
                case "ne":
                    Arity(2);
                    return !Equal(a[0], a[1]);
                case "not":
                    Arity(1);
                    return !Truthy(a[0]);
                case "and":
                    return a.FirstOrDefault(v => !Truthy(v), a.LastOrDefault());
                case "or":
                    return a.FirstOrDefault(Truthy, a.LastOrDefault());
                case "empty":
                    Arity(1);
                    return !Truthy(a[0]);
                case "printf":
                    return Printf(AsString(a[0]), a.Skip(1).ToList());
                case "trunc":
                {
                    Arity(2);
                    var text = AsString(a[1]);
                    int n = (int)AsNumber(a[0]);
                    return text.Length > n ? text[..n] : text;
                }

                case "trimSuffix":
                    Arity(2);
                    return AsString(a[1]).EndsWith(AsString(a[0]), StringComparison.Ordinal) ? AsString(a[1])[..^AsString(a[0]).Length] : AsString(a[1]);
                case "toString":
                    Arity(1);
                    return Print(a[0]);
                case "int" or "int64":
                    Arity(1);
                    return new GoInt(a[0] switch { double d => (long)d, string digits => long.Parse(digits, CultureInfo.InvariantCulture), GoInt i => i.Value, null => 0, _ => throw Error($"can't convert {Describe(a[0])} to int") });
                case "hasKey":
                    Arity(2);
                    return a[0] is Dictionary<string, object?> map ? map.ContainsKey(AsString(a[1])) : throw Error("hasKey needs a map");
                default:
                    throw Error($"function \"{name}\" not defined (not in this renderer's subset)");
            }
        }

        private string Printf(string format, List<object?> args)
        {
            var output = new StringBuilder();
            int next = 0;
            for (int i = 0; i < format.Length; i++)
            {
                if (format[i] != '%' || i + 1 >= format.Length)
                {
                    output.Append(format[i]);
                    continue;
                }

                char verb = format[++i];
                if (verb == '%')
                {
                    output.Append('%');
                    continue;
                }

                var arg = next < args.Count ? args[next++] : throw Error($"printf: missing argument for %{verb}");
                output.Append(verb switch
                {
                    's' or 'v' => Print(arg),
                    'd' => Print(arg is double d ? new GoInt((long)d) : arg),
                    'q' => "\"" + Print(arg).Replace("\"", "\\\"", StringComparison.Ordinal) + "\"",
                    _ => throw Error($"printf verb %{verb} not supported"),
                });
            }

            return output.ToString();
        }

        private string AsString(object? value) => value as string ?? throw Error($"expected a string, got {Describe(value)}");

        private double AsNumber(object? value) => value switch
        {
            double d => d,
            GoInt i => i.Value,
            _ => throw Error($"expected a number, got {Describe(value)}"),
        };

        private static bool Equal(object? x, object? y) => (x, y) switch
        {
            (GoInt i, double d) => i.Value == d,
            (double d, GoInt i) => i.Value == d,
            _ => Equals(x, y),
        };

        private string Print(object? value) => value switch
        {
            null => "",
            string s => s,
            bool b => b ? "true" : "false",
            double d => GoFloat(d),
            GoInt i => i.Value.ToString(CultureInfo.InvariantCulture),
            _ => throw Error($"printing {Describe(value)} is not supported (use toYaml)"),
        };

        private static string Describe(object? value) => value switch
        {
            null => "nil",
            Dictionary<string, object?> => "map",
            List<object?> => "list",
            _ => value.GetType().Name,
        };
    }

    /// <summary>An integer made by int/int64 (values' numbers are floats, as in Helm).</summary>
    internal sealed record GoInt(long Value);

    internal static bool Truthy(object? value) => value switch
    {
        null => false,
        bool b => b,
        double d => d != 0,
        GoInt i => i.Value != 0,
        string s => s.Length > 0,
        Dictionary<string, object?> m => m.Count > 0,
        List<object?> l => l.Count > 0,
        _ => true,
    };

    /// <summary>A float as Go's %v prints it: shortest digits, exponent form from 1e+06 up or below 1e-04.</summary>
    internal static string GoFloat(double d)
    {
        if (d == 0)
        {
            return "0";
        }

        var shortest = d.ToString("R", CultureInfo.InvariantCulture);
        int exponent = (int)Math.Floor(Math.Log10(Math.Abs(d)));
        if (exponent < -4 || exponent >= 6)
        {
            var mantissa = (d / Math.Pow(10, exponent)).ToString("R", CultureInfo.InvariantCulture);
            return $"{mantissa}e{(exponent < 0 ? '-' : '+')}{Math.Abs(exponent):00}";
        }

        return shortest;
    }
}
