using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using Grpc.Net.Client;
using Migrate.Agent.Contracts.Security;
using Migrate.Agent.V1;
using Migrate.NodeAgent;
using Migrate.NodeAgent.Checkpointing;
using Migrate.NodeAgent.Transfer;
using Migrate.TestSupport;

namespace Migrate.Benchmarks;

/// <summary>
/// 1 GiB of checkpoint-like images from one agent to another over loopback (mutual TLS, each
/// file's XXH3-128 checked on arrival, written to disk): on the bulk lane (the default) and as gRPC messages (a
/// target that does not offer the lane), side by side with the same bytes copied over a plain TCP
/// socket and over a TLS socket (read from disk, written to disk, nothing checked).
/// Throughput, the ratio to the baselines, and CPU seconds per GiB (the whole process: sender and
/// receiver both run in it). Runs alternate so that drift hits both; the best of each is kept.
/// </summary>
public static class TransferBenchmark
{
    private const int Files = 4;
    private const int FileBytes = 256 << 20;
    private const int Rounds = 2;
    private const double GiB = 1 << 30;

    public static async Task RunAsync(BenchmarkReport report)
    {
        using var pki = new TestPki();
        var root = Directory.CreateTempSubdirectory("podmig-bench-transfer-").FullName;
        try
        {
            await using var source = await TlsAgent.StartAsync(pki, "node-a", Path.Combine(root, "a"));
            await using var target = await TlsAgent.StartAsync(pki, "node-b", Path.Combine(root, "b"));
            await using var grpcTarget = await TlsAgent.StartAsync(pki, "node-c", Path.Combine(root, "c"), "--Agent:BulkTransfer=false");
            var staged = Path.Combine(source.Staging, "bench");
            Stage(source, staged);

            var hashing = Stopwatch.StartNew();
            var manifest = ImageSender.BuildManifest(staged);
            report.Add("transfer", "manifest_sha256_seconds_per_gib", hashing.Elapsed.TotalSeconds * GiB / manifest.Files.Sum(f => (long)f.Size), "s");
            hashing.Restart();
            ImageSender.BuildManifest(staged, kind: Migrate.Api.StagedDigestKind.Xxh128);
            report.Add("transfer", "manifest_xxh128_seconds_per_gib", hashing.Elapsed.TotalSeconds * GiB / manifest.Files.Sum(f => (long)f.Size), "s");

            var operatorIdentity = pki.Issue("operator");
            using var operatorTls = AgentTls.Load(operatorIdentity.CertificateFile, operatorIdentity.KeyFile, pki.AuthorityFile);
            var bulk = new List<(double Seconds, double Cpu)>();
            var grpc = new List<(double Seconds, double Cpu)>();
            var tcp = new List<(double Seconds, double Cpu)>();
            var tls = new List<(double Seconds, double Cpu)>();
            for (int round = 0; round < Rounds; round++)
            {
                tcp.Add(await MeasureAsync(() => CopyOverSocketAsync(staged, Path.Combine(root, "tcp"), null)));
                tls.Add(await MeasureAsync(() => CopyOverSocketAsync(staged, Path.Combine(root, "tls"), operatorTls)));
                bulk.Add(await MeasureAsync(() => SendAsync(pki, operatorTls, source, target, compress: false)));
                Directory.Delete(Path.Combine(target.Incoming, "bench"), recursive: true);
                grpc.Add(await MeasureAsync(() => SendAsync(pki, operatorTls, source, grpcTarget, compress: false)));
                Directory.Delete(Path.Combine(grpcTarget.Incoming, "bench"), recursive: true);
            }

            int gen2 = GC.CollectionCount(2);
            var zstd = await MeasureAsync(() => SendAsync(pki, operatorTls, source, target, compress: true));
            report.Add("transfer", "agents_zstd_gen2_collections_per_gib", (GC.CollectionCount(2) - gen2) * GiB / ((double)Files * FileBytes), "");
            var bestBulk = bulk.MinBy(r => r.Seconds);
            var bestGrpc = grpc.MinBy(r => r.Seconds);
            var bestTcp = tcp.MinBy(r => r.Seconds);
            var bestTls = tls.MinBy(r => r.Seconds);
            double bytes = (double)Files * FileBytes;
            report.Add("transfer", "agents_bulk_lane_mb_per_s", bytes / 1e6 / bestBulk.Seconds, "MB/s");
            report.Add("transfer", "agents_grpc_lane_mb_per_s", bytes / 1e6 / bestGrpc.Seconds, "MB/s");
            report.Add("transfer", "plain_tcp_mb_per_s", bytes / 1e6 / bestTcp.Seconds, "MB/s");
            report.Add("transfer", "tls_tcp_mb_per_s", bytes / 1e6 / bestTls.Seconds, "MB/s");
            report.Add("transfer", "bulk_to_grpc_lane_ratio", bestGrpc.Seconds / bestBulk.Seconds, "x");
            report.Add("transfer", "bulk_to_plain_tcp_ratio", bestTcp.Seconds / bestBulk.Seconds, "x");
            report.Add("transfer", "bulk_to_tls_tcp_ratio", bestTls.Seconds / bestBulk.Seconds, "x");
            report.Add("transfer", "bulk_cpu_seconds_per_gib", bestBulk.Cpu * GiB / bytes, "s");
            report.Add("transfer", "grpc_lane_cpu_seconds_per_gib", bestGrpc.Cpu * GiB / bytes, "s");
            report.Add("transfer", "plain_tcp_cpu_seconds_per_gib", bestTcp.Cpu * GiB / bytes, "s");
            report.Add("transfer", "tls_tcp_cpu_seconds_per_gib", bestTls.Cpu * GiB / bytes, "s");
            report.Add("transfer", "agents_zstd_mb_per_s", bytes / 1e6 / zstd.Seconds, "MB/s");
            report.Add("transfer", "agents_zstd_cpu_seconds_per_gib", zstd.Cpu * GiB / bytes, "s");
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private static void Stage(TlsAgent agent, string directory)
    {
        Directory.CreateDirectory(directory);
        for (int i = 0; i < Files; i++)
        {
            using var file = File.Create(Path.Combine(directory, $"pages-{i + 1}.img"));
            for (int block = 0; block < FileBytes / (16 << 20); block++)
            {
                file.Write(CheckpointData.Create(16 << 20, (i * 1000) + block));
            }
        }

        agent.RecordFrozenMigration("bench", directory);
    }

    private static async Task<(double Seconds, double Cpu)> MeasureAsync(Func<Task> action)
    {
        GC.Collect();
        var process = Process.GetCurrentProcess();
        var cpu = process.TotalProcessorTime;
        var clock = Stopwatch.StartNew();
        await action();
        clock.Stop();
        process.Refresh();
        return (clock.Elapsed.TotalSeconds, (process.TotalProcessorTime - cpu).TotalSeconds);
    }

    private static async Task SendAsync(TestPki pki, AgentTls operatorTls, TlsAgent source, TlsAgent target, bool compress)
    {
        var token = pki.Token("bench", source.Name, target.Name);
        using var toTarget = GrpcChannel.ForAddress("https://" + target.Address, new GrpcChannelOptions { HttpHandler = operatorTls.CreateHandler(target.Name) });
        using var toSource = GrpcChannel.ForAddress("https://" + source.Address, new GrpcChannelOptions { HttpHandler = operatorTls.CreateHandler(source.Name) });
        await new Agent.V1.NodeAgent.NodeAgentClient(toTarget).ExpectImagesAsync(new ExpectImagesRequest { MigrationId = "bench", Token = token });
        using var call = new Agent.V1.NodeAgent.NodeAgentClient(toSource).SendImages(new SendImagesRequest
        {
            MigrationId = "bench",
            TargetAddress = target.Address,
            TargetNode = target.Name,
            Token = token,
            Compress = compress,
        });
        TransferProgress? last = null;
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
        {
            last = call.ResponseStream.Current;
        }

        if (last?.Staged != true)
        {
            throw new InvalidOperationException("the benchmark transfer did not finish");
        }
    }

    /// <summary>The baseline: each file read from disk, sent over one socket, written to disk on the other side.</summary>
    private static async Task CopyOverSocketAsync(string from, string to, AgentTls? tls)
    {
        Directory.CreateDirectory(to);
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var receiving = Task.Run(async () =>
        {
            using var socket = await listener.AcceptSocketAsync();
            Stream stream = new NetworkStream(socket, ownsSocket: false);
            if (tls is not null)
            {
                var ssl = new SslStream(stream);
                await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions { ServerCertificate = tls.Certificate, CipherSuitesPolicy = AgentTls.Suites });
                stream = ssl;
            }

            await using (stream)
            {
                var buffer = new byte[1 << 20];
                for (int i = 0; i < Files; i++)
                {
                    await using var file = new FileStream(Path.Combine(to, $"pages-{i + 1}.img"), FileMode.Create, FileAccess.Write, FileShare.None, 0);
                    long left = FileBytes;
                    while (left > 0)
                    {
                        int read = await stream.ReadAtLeastAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, left)), (int)Math.Min(buffer.Length, left), throwOnEndOfStream: false);
                        if (read == 0)
                        {
                            throw new IOException("the baseline sender closed early");
                        }

                        await file.WriteAsync(buffer.AsMemory(0, read));
                        left -= read;
                    }
                }
            }
        });

        using (var client = new TcpClient())
        {
            await client.ConnectAsync((IPEndPoint)listener.LocalEndpoint);
            Stream stream = client.GetStream();
            if (tls is not null)
            {
                // the same check the agents make: the peer's certificate chains to the cluster CA
                var ssl = new SslStream(stream, false, (_, certificate, _, _) => certificate is X509Certificate2 peer && tls.IsTrusted(peer));
                await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "bench", CipherSuitesPolicy = AgentTls.Suites });
                stream = ssl;
            }

            await using (stream)
            {
                var buffer = new byte[1 << 20];
                for (int i = 0; i < Files; i++)
                {
                    await using var file = new FileStream(Path.Combine(from, $"pages-{i + 1}.img"), FileMode.Open, FileAccess.Read, FileShare.Read, 0);
                    int read;
                    while ((read = await file.ReadAsync(buffer)) > 0)
                    {
                        await stream.WriteAsync(buffer.AsMemory(0, read));
                    }
                }

                // close only once everything was written on the other side (closing with unread
                // TLS session tickets in the receive buffer would reset the connection)
                await receiving;
            }
        }

        Directory.Delete(to, recursive: true);
    }
}
