namespace Migrate.TestSupport;

/// <summary>
/// The operator's validating webhooks as the sandbox and the tests install them: the same as
/// deploy/operator/webhooks.yaml, but called by URL (there is no cluster network) and without a CA
/// bundle (the operator writes in the CA of the certificate it makes).
/// </summary>
public static class OperatorWebhooks
{
    public const string ConfigurationName = "podmig-operator-webhooks";

    /// <param name="baseUrl">https://host:port of the operator's webhook endpoint.</param>
    public static string Configuration(string baseUrl) => $$"""
            apiVersion: admissionregistration.k8s.io/v1
            kind: ValidatingWebhookConfiguration
            metadata: {name: podmig-operator-webhooks}
            webhooks:
              - name: pod-names.podmigration.io
                admissionReviewVersions: [v1]
                sideEffects: None
                failurePolicy: Fail
                timeoutSeconds: 5
                objectSelector:
                  matchLabels:
                    podmigration.io/keep-name: "true"
                rules:
                  - apiGroups: [""]
                    apiVersions: [v1]
                    operations: [CREATE]
                    resources: [pods]
                clientConfig:
                  url: {{baseUrl}}/validate-pods
              - name: pod-names-deprecated-label.podmigration.io
                admissionReviewVersions: [v1]
                sideEffects: None
                failurePolicy: Fail
                timeoutSeconds: 5
                objectSelector:
                  matchLabels:
                    podmig.io/keep-name: "true"
                rules:
                  - apiGroups: [""]
                    apiVersions: [v1]
                    operations: [CREATE]
                    resources: [pods]
                clientConfig:
                  url: {{baseUrl}}/validate-pods
              - name: evictions.podmigration.io
                admissionReviewVersions: [v1]
                sideEffects: NoneOnDryRun
                failurePolicy: Ignore
                timeoutSeconds: 5
                rules:
                  - apiGroups: [""]
                    apiVersions: [v1]
                    operations: [CREATE]
                    resources: [pods/eviction]
                clientConfig:
                  url: {{baseUrl}}/validate-evictions
            """;
}
