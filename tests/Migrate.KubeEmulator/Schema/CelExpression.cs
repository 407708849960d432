using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Migrate.KubeEmulator.Schema;

public sealed class CelException(string message) : Exception(message);

/// <summary>
/// A subset of CEL, enough for the validation rules CRDs commonly carry: literals, <c>self</c> and
/// <c>oldSelf</c>, field and index access, <c>has()</c>, arithmetic, comparison, logic, the ternary,
/// <c>in</c>, list and map literals, <c>size</c>, string functions (startsWith, endsWith, contains,
/// matches, lowerAscii, upperAscii), the macros all, exists, exists_one, map, filter, and the
/// conversions int, double, string. Anything else fails to compile with a message naming it.
/// </summary>
public sealed class CelExpression
{
    private readonly Node _root;

    private CelExpression(Node root, bool referencesOldSelf)
    {
        _root = root;
        ReferencesOldSelf = referencesOldSelf;
    }

    public bool ReferencesOldSelf { get; }

    public static CelExpression Compile(string text)
    {
        var parser = new Parser(text);
        var root = parser.ParseExpression();
        parser.ExpectEnd();
        return new CelExpression(root, parser.SawOldSelf);
    }

    /// <summary>Evaluates the rule; it must produce a boolean.</summary>
    public bool Evaluate(JsonNode? self, JsonNode? oldSelf)
    {
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["self"] = FromJson(self),
            ["oldSelf"] = FromJson(oldSelf),
        };
        return _root.Eval(scope) is bool b ? b : throw new CelException("rule did not evaluate to a boolean");
    }

    internal static object? FromJson(JsonNode? node) => node switch
    {
        null => null,
        JsonObject o => o,
        JsonArray a => a.Select(FromJson).ToList(),
        JsonValue v => v.GetValueKind() switch
        {
            JsonValueKind.String => v.GetValue<string>(),
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            JsonValueKind.Number => double.IsInteger(v.GetValue<double>()) && Math.Abs(v.GetValue<double>()) < 9e15 ? (long)v.GetValue<double>() : v.GetValue<double>(),
            _ => null,
        },
        _ => null,
    };

    private abstract class Node
    {
        public abstract object? Eval(Dictionary<string, object?> scope);
    }

    private sealed class Literal(object? value) : Node
    {
        public override object? Eval(Dictionary<string, object?> scope) => value;
    }

    private sealed class Ident(string name) : Node
    {
        public string Name => name;

        public override object? Eval(Dictionary<string, object?> scope) =>
            scope.TryGetValue(name, out var v) ? v : throw new CelException($"undeclared reference to '{name}'");
    }

    private sealed class Member(Node targetNode, string fieldName) : Node
    {
        public Node Target => targetNode;

        public string Field => fieldName;

        public override object? Eval(Dictionary<string, object?> scope) => Select(targetNode.Eval(scope), fieldName, presenceOnly: false);

        public static object? Select(object? value, string field, bool presenceOnly)
        {
            if (value is JsonObject o)
            {
                if (o.TryGetPropertyValue(field, out var child))
                {
                    return presenceOnly ? true : FromJson(child);
                }

                return presenceOnly ? false : throw new CelException($"no such key: {field}");
            }

            if (value is Dictionary<string, object?> map)
            {
                if (map.TryGetValue(field, out var child))
                {
                    return presenceOnly ? true : child;
                }

                return presenceOnly ? false : throw new CelException($"no such key: {field}");
            }

            throw new CelException($"cannot select '{field}' from {Describe(value)}");
        }
    }

    private sealed class IndexNode(Node target, Node index) : Node
    {
        public override object? Eval(Dictionary<string, object?> scope)
        {
            var t = target.Eval(scope);
            var i = index.Eval(scope);
            return (t, i) switch
            {
                (List<object?> list, long n) when n >= 0 && n < list.Count => list[(int)n],
                (List<object?>, long n) => throw new CelException($"index out of bounds: {n}"),
                (_, string key) => Member.Select(t, key, presenceOnly: false),
                _ => throw new CelException($"cannot index {Describe(t)} with {Describe(i)}"),
            };
        }
    }

    private sealed class Unary(string op, Node operand) : Node
    {
        public override object? Eval(Dictionary<string, object?> scope)
        {
            var v = operand.Eval(scope);
            return (op, v) switch
            {
                ("!", bool b) => !b,
                ("-", long l) => -l,
                ("-", double d) => -d,
                _ => throw new CelException($"no such overload: {op}{Describe(v)}"),
            };
        }
    }

    private sealed class Binary(string op, Node left, Node right) : Node
    {
        public override object? Eval(Dictionary<string, object?> scope)
        {
            if (op == "&&")
            {
                return left.Eval(scope) is true && AsBool(right.Eval(scope));
            }

            if (op == "||")
            {
                return left.Eval(scope) is true || AsBool(right.Eval(scope));
            }

            var a = left.Eval(scope);
            var b = right.Eval(scope);
            return op switch
            {
                "==" => ValueEquals(a, b),
                "!=" => !ValueEquals(a, b),
                "<" => Compare(a, b) < 0,
                "<=" => Compare(a, b) <= 0,
                ">" => Compare(a, b) > 0,
                ">=" => Compare(a, b) >= 0,
                "in" => b switch
                {
                    List<object?> list => list.Any(x => ValueEquals(x, a)),
                    JsonObject o when a is string s => o.ContainsKey(s),
                    Dictionary<string, object?> m when a is string s => m.ContainsKey(s),
                    _ => throw new CelException($"no such overload: {Describe(a)} in {Describe(b)}"),
                },
                "+" => (a, b) switch
                {
                    (long x, long y) => x + y,
                    (string x, string y) => x + y,
                    (List<object?> x, List<object?> y) => x.Concat(y).ToList(),
                    _ => Arithmetic(a, b, (x, y) => x + y),
                },
                "-" => (a, b) is (long x, long y) ? x - y : Arithmetic(a, b, (x, y) => x - y),
                "*" => (a, b) is (long x, long y) ? x * y : Arithmetic(a, b, (x, y) => x * y),
                "/" => (a, b) switch
                {
                    (long, 0L) => throw new CelException("division by zero"),
                    (long x, long y) => x / y,
                    _ => Arithmetic(a, b, (x, y) => x / y),
                },
                "%" => (a, b) switch
                {
                    (long, 0L) => throw new CelException("modulus by zero"),
                    (long x, long y) => x % y,
                    _ => throw new CelException("no such overload: %"),
                },
                _ => throw new CelException($"unknown operator {op}"),
            };
        }
    }

    private sealed class Conditional(Node condition, Node then, Node otherwise) : Node
    {
        public override object? Eval(Dictionary<string, object?> scope) =>
            AsBool(condition.Eval(scope)) ? then.Eval(scope) : otherwise.Eval(scope);
    }

    private sealed class ListLiteral(List<Node> items) : Node
    {
        public override object? Eval(Dictionary<string, object?> scope) => items.Select(i => i.Eval(scope)).ToList();
    }

    private sealed class MapLiteral(List<(Node Key, Node Value)> entries) : Node
    {
        public override object? Eval(Dictionary<string, object?> scope)
        {
            var map = new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var (k, v) in entries)
            {
                map[k.Eval(scope) as string ?? throw new CelException("map keys must be strings here")] = v.Eval(scope);
            }

            return map;
        }
    }

    private sealed class Has(Member member) : Node
    {
        public override object? Eval(Dictionary<string, object?> scope) => Member.Select(member.Target.Eval(scope), member.Field, presenceOnly: true);
    }

    private sealed class Call(Node? target, string function, List<Node> args) : Node
    {
        public override object? Eval(Dictionary<string, object?> scope)
        {
            if (target is not null && function is "all" or "exists" or "exists_one" or "map" or "filter")
            {
                return Macro(scope);
            }

            var receiver = target?.Eval(scope);
            var values = args.Select(a => a.Eval(scope)).ToList();
            if (target is null)
            {
                return (function, values.Count) switch
                {
                    ("size", 1) => Size(values[0]),
                    ("int", 1) => values[0] switch
                    {
                        long l => l,
                        double d => (long)d,
                        string s when long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var l) => l,
                        var v => throw new CelException($"cannot convert {Describe(v)} to int"),
                    },
                    ("double", 1) => values[0] switch
                    {
                        long l => (double)l,
                        double d => d,
                        string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => d,
                        var v => throw new CelException($"cannot convert {Describe(v)} to double"),
                    },
                    ("string", 1) => values[0] switch
                    {
                        string s => s,
                        long l => l.ToString(CultureInfo.InvariantCulture),
                        double d => d.ToString(CultureInfo.InvariantCulture),
                        bool b => b ? "true" : "false",
                        var v => throw new CelException($"cannot convert {Describe(v)} to string"),
                    },
                    _ => throw new CelException($"unknown function {function}/{values.Count}"),
                };
            }

            return (function, receiver, values.Count) switch
            {
                ("size", _, 0) => Size(receiver),
                ("startsWith", string s, 1) => s.StartsWith(AsString(values[0]), StringComparison.Ordinal),
                ("endsWith", string s, 1) => s.EndsWith(AsString(values[0]), StringComparison.Ordinal),
                ("contains", string s, 1) => s.Contains(AsString(values[0]), StringComparison.Ordinal),
                ("matches", string s, 1) => Regex.IsMatch(s, AsString(values[0]), RegexOptions.None, TimeSpan.FromSeconds(1)),
                ("lowerAscii", string s, 0) => s.ToLowerInvariant(),
                ("upperAscii", string s, 0) => s.ToUpperInvariant(),
                _ => throw new CelException($"unknown method {function}/{values.Count} on {Describe(receiver)}"),
            };
        }

        private object? Macro(Dictionary<string, object?> scope)
        {
            if (args.Count != 2 || args[0] is not Ident variable)
            {
                throw new CelException($"{function} takes a variable and an expression");
            }

            var items = target!.Eval(scope) switch
            {
                List<object?> list => list,
                JsonObject o => o.Select(p => (object?)p.Key).ToList(),
                Dictionary<string, object?> m => m.Keys.Cast<object?>().ToList(),
                var v => throw new CelException($"{function} needs a list or map, got {Describe(v)}"),
            };
            var inner = new Dictionary<string, object?>(scope, StringComparer.Ordinal);
            var body = args[1];
            object? Apply(object? item)
            {
                inner[variable.Name] = item;
                return body.Eval(inner);
            }

            return function switch
            {
                "all" => items.All(i => AsBool(Apply(i))),
                "exists" => items.Any(i => AsBool(Apply(i))),
                "exists_one" => items.Count(i => AsBool(Apply(i))) == 1,
                "map" => items.Select(Apply).ToList(),
                _ => items.Where(i => AsBool(Apply(i))).ToList(),
            };
        }
    }

    private static long Size(object? value) => value switch
    {
        string s => s.EnumerateRunes().Count(),
        List<object?> l => l.Count,
        JsonObject o => o.Count,
        Dictionary<string, object?> m => m.Count,
        _ => throw new CelException($"no such overload: size({Describe(value)})"),
    };

    private static bool AsBool(object? value) => value as bool? ?? throw new CelException($"expected a boolean, got {Describe(value)}");

    private static string AsString(object? value) => value as string ?? throw new CelException($"expected a string, got {Describe(value)}");

    private static double Arithmetic(object? a, object? b, Func<double, double, double> op) => (a, b) switch
    {
        (double x, double y) => op(x, y),
        (double x, long y) => op(x, y),
        (long x, double y) => op(x, y),
        _ => throw new CelException($"no such overload for {Describe(a)} and {Describe(b)}"),
    };

    private static bool ValueEquals(object? a, object? b) => (a, b) switch
    {
        (null, null) => true,
        (long x, double y) => x == y,
        (double x, long y) => x == y,
        (JsonObject x, JsonObject y) => JsonNode.DeepEquals(x, y),
        (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => ValueEquals(p.First, p.Second)),
        (Dictionary<string, object?> x, JsonObject y) => MapEqualsJson(x, y),
        (JsonObject x, Dictionary<string, object?> y) => MapEqualsJson(y, x),
        _ => Equals(a, b),
    };

    private static bool MapEqualsJson(Dictionary<string, object?> map, JsonObject json) =>
        map.Count == json.Count && map.All(p => json.TryGetPropertyValue(p.Key, out var v) && ValueEquals(p.Value, FromJson(v)));

    private static int Compare(object? a, object? b) => (a, b) switch
    {
        (long x, long y) => x.CompareTo(y),
        (double x, double y) => x.CompareTo(y),
        (long x, double y) => ((double)x).CompareTo(y),
        (double x, long y) => x.CompareTo(y),
        (string x, string y) => string.CompareOrdinal(x, y),
        _ => throw new CelException($"cannot compare {Describe(a)} with {Describe(b)}"),
    };

    private static string Describe(object? value) => value switch
    {
        null => "null",
        bool => "bool",
        long => "int",
        double => "double",
        string => "string",
        List<object?> => "list",
        _ => "map",
    };

    private static readonly HashSet<string> Functions = new(StringComparer.Ordinal) { "size", "int", "double", "string" };

    private static readonly HashSet<string> Methods = new(StringComparer.Ordinal)
    {
        "size", "startsWith", "endsWith", "contains", "matches", "lowerAscii", "upperAscii", "all", "exists", "exists_one", "map", "filter",
    };

    private sealed class Parser(string text)
    {
        private int _pos;

        private readonly HashSet<string> _variables = new(StringComparer.Ordinal);

        public bool SawOldSelf { get; private set; }

        public void ExpectEnd()
        {
            SkipSpace();
            if (_pos < text.Length)
            {
                throw new CelException($"unexpected '{text[_pos..]}' at {_pos}");
            }
        }

        public Node ParseExpression()
        {
            var condition = ParseOr();
            if (Accept("?"))
            {
                var then = ParseExpression();
                Expect(":");
                var otherwise = ParseExpression();
                return new Conditional(condition, then, otherwise);
            }

            return condition;
        }

        private Node ParseOr()
        {
            var left = ParseAnd();
            while (Accept("||"))
            {
                left = new Binary("||", left, ParseAnd());
            }

            return left;
        }

        private Node ParseAnd()
        {
            var left = ParseRelation();
            while (Accept("&&"))
            {
                left = new Binary("&&", left, ParseRelation());
            }

            return left;
        }

        private Node ParseRelation()
        {
            var left = ParseAdditive();
            foreach (var op in new[] { "==", "!=", "<=", ">=", "<", ">" })
            {
                if (Accept(op))
                {
                    return new Binary(op, left, ParseAdditive());
                }
            }

            if (AcceptWord("in"))
            {
                return new Binary("in", left, ParseAdditive());
            }

            return left;
        }

        private Node ParseAdditive()
        {
            var left = ParseMultiplicative();
            while (true)
            {
                if (Accept("+"))
                {
                    left = new Binary("+", left, ParseMultiplicative());
                }
                else if (Peek("-") && !Peek("->"))
                {
                    _pos++;
                    left = new Binary("-", left, ParseMultiplicative());
                }
                else
                {
                    return left;
                }
            }
        }

        private Node ParseMultiplicative()
        {
            var left = ParseUnary();
            while (true)
            {
                if (Accept("*"))
                {
                    left = new Binary("*", left, ParseUnary());
                }
                else if (Accept("/"))
                {
                    left = new Binary("/", left, ParseUnary());
                }
                else if (Accept("%"))
                {
                    left = new Binary("%", left, ParseUnary());
                }
                else
                {
                    return left;
                }
            }
        }

        private Node ParseUnary()
        {
            if (Accept("!"))
            {
                return new Unary("!", ParseUnary());
            }

            if (Accept("-"))
            {
                return new Unary("-", ParseUnary());
            }

            return ParsePostfix(ParsePrimary());
        }

        private Node ParsePostfix(Node node)
        {
            while (true)
            {
                if (Accept("."))
                {
                    var name = Identifier();
                    if (Accept("("))
                    {
                        if (!Methods.Contains(name))
                        {
                            throw new CelException($"unsupported method {name}()");
                        }

                        node = new Call(node, name, name is "all" or "exists" or "exists_one" or "map" or "filter" ? MacroArguments() : Arguments());
                    }
                    else
                    {
                        node = new Member(node, name);
                    }
                }
                else if (Accept("["))
                {
                    var index = ParseExpression();
                    Expect("]");
                    node = new IndexNode(node, index);
                }
                else
                {
                    return node;
                }
            }
        }

        private Node ParsePrimary()
        {
            SkipSpace();
            if (_pos >= text.Length)
            {
                throw new CelException("unexpected end of rule");
            }

            char c = text[_pos];
            if (Accept("("))
            {
                var inner = ParseExpression();
                Expect(")");
                return inner;
            }

            if (Accept("["))
            {
                var items = new List<Node>();
                if (!Accept("]"))
                {
                    do
                    {
                        items.Add(ParseExpression());
                    }
                    while (Accept(","));
                    Expect("]");
                }

                return new ListLiteral(items);
            }

            if (Accept("{"))
            {
                var entries = new List<(Node, Node)>();
                if (!Accept("}"))
                {
                    do
                    {
                        var key = ParseExpression();
                        Expect(":");
                        entries.Add((key, ParseExpression()));
                    }
                    while (Accept(","));
                    Expect("}");
                }

                return new MapLiteral(entries);
            }

            if (c is '\'' or '"')
            {
                return new Literal(StringLiteral());
            }

            if (char.IsAsciiDigit(c))
            {
                return new Literal(NumberLiteral());
            }

            var name = Identifier();
            switch (name)
            {
                case "true":
                    return new Literal(true);
                case "false":
                    return new Literal(false);
                case "null":
                    return new Literal(null);
                case "oldSelf":
                    SawOldSelf = true;
                    return new Ident(name);
                case "has":
                    Expect("(");
                    var argument = ParseExpression();
                    Expect(")");
                    return argument is Member m ? new Has(m) : throw new CelException("has() needs a field selection, e.g. has(self.spec)");
            }

            if (Accept("("))
            {
                return Functions.Contains(name) ? new Call(null, name, Arguments()) : throw new CelException($"unsupported function {name}()");
            }

            return name is "self" or "oldSelf" || _variables.Contains(name) ? new Ident(name) : throw new CelException($"undeclared reference to '{name}'");
        }

        /// <summary>A macro's arguments: a variable, then an expression in which that variable is declared.</summary>
        private List<Node> MacroArguments()
        {
            var variable = Identifier();
            Expect(",");
            bool added = _variables.Add(variable);
            var body = ParseExpression();
            if (added)
            {
                _variables.Remove(variable);
            }

            Expect(")");
            return [new Ident(variable), body];
        }

        private List<Node> Arguments()
        {
            var args = new List<Node>();
            if (Accept(")"))
            {
                return args;
            }

            do
            {
                args.Add(ParseExpression());
            }
            while (Accept(","));
            Expect(")");
            return args;
        }

        private string StringLiteral()
        {
            char quote = text[_pos++];
            var sb = new StringBuilder();
            while (_pos < text.Length && text[_pos] != quote)
            {
                if (text[_pos] == '\\' && _pos + 1 < text.Length)
                {
                    _pos++;
                    sb.Append(text[_pos] switch { 'n' => '\n', 't' => '\t', var other => other });
                }
                else
                {
                    sb.Append(text[_pos]);
                }

                _pos++;
            }

            if (_pos >= text.Length)
            {
                throw new CelException("unterminated string");
            }

            _pos++;
            return sb.ToString();
        }

        private object NumberLiteral()
        {
            int start = _pos;
            while (_pos < text.Length && (char.IsAsciiDigit(text[_pos]) || text[_pos] is '.' or 'e' or 'E'))
            {
                _pos++;
            }

            var token = text[start.._pos];
            if (_pos < text.Length && text[_pos] == 'u')
            {
                _pos++;
            }

            return token.Contains('.', StringComparison.Ordinal) || token.Contains('e', StringComparison.OrdinalIgnoreCase)
                ? double.Parse(token, CultureInfo.InvariantCulture)
                : long.Parse(token, CultureInfo.InvariantCulture);
        }

        private string Identifier()
        {
            SkipSpace();
            int start = _pos;
            while (_pos < text.Length && (char.IsAsciiLetterOrDigit(text[_pos]) || text[_pos] == '_'))
            {
                _pos++;
            }

            if (start == _pos)
            {
                throw new CelException($"unsupported syntax at {start}: '{(start < text.Length ? text[start..] : "")}'");
            }

            return text[start.._pos];
        }

        private bool Peek(string token)
        {
            SkipSpace();
            return string.CompareOrdinal(text, _pos, token, 0, token.Length) == 0;
        }

        private bool Accept(string token)
        {
            if (!Peek(token))
            {
                return false;
            }

            // "<" must not swallow the first char of "<=", etc.: longer operators are tried first by callers.
            _pos += token.Length;
            return true;
        }

        private bool AcceptWord(string word)
        {
            SkipSpace();
            if (string.CompareOrdinal(text, _pos, word, 0, word.Length) == 0
                && (_pos + word.Length >= text.Length || !char.IsAsciiLetterOrDigit(text[_pos + word.Length])))
            {
                _pos += word.Length;
                return true;
            }

            return false;
        }

        private void Expect(string token)
        {
            if (!Accept(token))
            {
                throw new CelException($"expected '{token}' at {_pos}");
            }
        }

        private void SkipSpace()
        {
            while (_pos < text.Length && char.IsWhiteSpace(text[_pos]))
            {
                _pos++;
            }
        }
    }
}
