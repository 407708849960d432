using k8s.Models;

namespace Migrate.Operator.Kubernetes;

/// <summary>Kubernetes' selector semantics for labels: matchLabels, and the operators of matchExpressions.</summary>
public static class LabelSelectors
{
    /// <summary>Whether <paramref name="labels"/> satisfy the selector (an empty selector matches everything, as in a Deployment's).</summary>
    public static bool Matches(V1LabelSelector? selector, IDictionary<string, string>? labels)
    {
        labels ??= new Dictionary<string, string>();
        if (selector is null)
        {
            return true;
        }

        foreach (var (key, value) in selector.MatchLabels ?? new Dictionary<string, string>())
        {
            if (!labels.TryGetValue(key, out var actual) || actual != value)
            {
                return false;
            }
        }

        return (selector.MatchExpressions ?? []).All(e => Satisfies(e.OperatorProperty, labels.TryGetValue(e.Key, out var v), v, e.Values ?? []));
    }

    /// <summary>One requirement: In, NotIn, Exists, DoesNotExist, and (node selectors only) Gt and Lt on integers.</summary>
    public static bool Satisfies(string? op, bool has, string? value, IList<string> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        return op switch
        {
            "In" => has && values.Contains(value!),
            "NotIn" => !has || !values.Contains(value!),
            "Exists" => has,
            "DoesNotExist" => !has,
            "Gt" => has && long.TryParse(value, out var a) && values.Count == 1 && long.TryParse(values[0], out var b) && a > b,
            "Lt" => has && long.TryParse(value, out var c) && values.Count == 1 && long.TryParse(values[0], out var d) && c < d,
            _ => false,
        };
    }
}
