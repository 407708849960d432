using k8s;
using k8s.Autorest;
using k8s.Models;

namespace Migrate.Operator.Reconciliation;

/// <summary>Kubernetes Events on MigrationRequests and pods, as `kubectl describe` shows them. Best effort: a lost event never stops a migration.</summary>
public sealed class EventRecorder(IKubernetes client, TimeProvider time)
{
    public const string Component = "podmig-operator";

    public async Task RecordAsync(string apiVersion, string kind, V1ObjectMeta subject, string type, string reason, string message, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(subject);
        var now = time.GetUtcNow().UtcDateTime;
        var ns = subject.NamespaceProperty ?? "default"; // events of cluster-scoped objects live in default
        try
        {
            await client.CoreV1.CreateNamespacedEventAsync(new Corev1Event
            {
                Metadata = new V1ObjectMeta { GenerateName = subject.Name + ".", NamespaceProperty = ns },
                InvolvedObject = new V1ObjectReference { ApiVersion = apiVersion, Kind = kind, Name = subject.Name, NamespaceProperty = subject.NamespaceProperty, Uid = subject.Uid },
                Type = type,
                Reason = reason,
                Message = message,
                Source = new V1EventSource { Component = Component },
                ReportingComponent = Component,
                FirstTimestamp = now,
                LastTimestamp = now,
                Count = 1,
            }, ns, cancellationToken: cancellationToken);
        }
        catch (HttpOperationException)
        {
            // events are a courtesy
        }
    }
}
