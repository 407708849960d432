using Xunit;

namespace Migrate.NodeAgent.Tests;

public sealed class HostConfigurationTests
{
    [Theory]
    [InlineData("127.0.0.2:7070", "127.0.0.2", 7070)]
    [InlineData("[::1]:9000", "::1", 9000)]
    [InlineData("localhost:8080", "127.0.0.1", 8080)]
    public void Listen_addresses_parse(string value, string address, int port)
    {
        var endpoint = AgentHost.ParseEndpoint(value);

        Assert.Equal(address, endpoint.Address.ToString());
        Assert.Equal(port, endpoint.Port);
    }

    [Theory]
    [InlineData("7070")]
    [InlineData("node-a:7070")]
    [InlineData("127.0.0.1")]
    public void A_listen_address_without_host_and_port_is_refused_with_an_example(string value)
    {
        var error = Assert.Throws<ArgumentException>(() => AgentHost.ParseEndpoint(value));

        Assert.Contains("host:port", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Cpu_facts_come_from_the_first_processor_block()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU @ 2.0GHz\nflags\t\t: sse2 fpu avx2\n\nprocessor\t: 1\nflags\t\t: other\n");

            var cpu = NodeCapabilities.ReadCpu(path);

            Assert.Equal("GenuineIntel", cpu.Vendor);
            Assert.Equal("Test CPU @ 2.0GHz", cpu.ModelName);
            Assert.Equal(["avx2", "fpu", "sse2"], cpu.Flags);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
