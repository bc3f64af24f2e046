package httpval

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// DefaultIPv6Prefix is the length of the IPv6 prefix that identifies one
// client: a /64 is what one subscriber or one host is given, and its 2^64
// addresses are all the same client's.
const DefaultIPv6Prefix = 64

// IP is s as an address, written one way ("" when s is none): without a
// zone, and an IPv4 address mapped into IPv6 written as IPv4. An address
// with a port is the address (see withPort).
func IP(s string) string {
	a, err := netip.ParseAddr(stripZone(s))
	if err != nil {
		return withPort(s)
	}
	return a.Unmap().String()
}

// withPort is IP of an address with a port ("192.0.2.1:51234",
// "[2001:db8::1%eth0]:443"), as some proxies write the client in
// X-Forwarded-For and Caddy's trusted_proxies reads it: the plugin's
// ipStrategy took every client of such a proxy for the proxy, one counter
// for all, where Caddy counted each client alone.
func withPort(s string) string {
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		return ""
	}
	a, err := netip.ParseAddr(stripZone(host))
	if err != nil {
		return ""
	}
	return a.Unmap().String()
}

// IPKey is the client a key of the address s counts ("" when s is no
// address): an IPv4 address as it is (mapped into IPv6 or not, or carried
// in an IPv6 address by a translation or a tunnel: see Embedded), an IPv6
// address as its prefix of v6Bits bits (1 to 128; 128 is the address), so
// that a client cannot make new counters by changing the addresses its
// network gives it.
func IPKey(s string, v6Bits int) string {
	a, err := netip.ParseAddr(stripZone(s))
	if err != nil {
		return ""
	}
	a = Embedded(a.Unmap())
	if a.Is4() || v6Bits >= 128 || v6Bits <= 0 {
		return a.String()
	}
	p, err := a.Prefix(v6Bits)
	if err != nil {
		return a.String()
	}
	return p.String()
}

// ClientKey is IPKey for a key: what is no address counts as it is, and
// an IPv4 address as the Caddy module and the Traefik plugin write it is
// its own key, unparsed.
func ClientKey(ip string, v6Bits int) string {
	if strings.IndexByte(ip, ':') < 0 {
		return ip
	}
	if k := IPKey(ip, v6Bits); k != "" {
		return k
	}
	return ip
}

// IPv6Prefix checks a configured IPv6 prefix length: 0 is the default.
func IPv6Prefix(bits int) (int, error) {
	if bits == 0 {
		return DefaultIPv6Prefix, nil
	}
	if bits < 1 || bits > 128 {
		return 0, fmt.Errorf("IPv6 prefix %d: want a length from 1 to 128", bits)
	}
	return bits, nil
}

func stripZone(s string) string {
	if i := strings.IndexByte(s, '%'); i >= 0 {
		return s[:i]
	}
	return s
}

// The IPv6 prefixes that carry an IPv4 client's address.
var (
	nat64Prefix     = netip.MustParsePrefix("64:ff9b::/96")    // RFC 6052: SIIT and NAT64 write IPv4 clients so
	translatedIPv4  = netip.MustParsePrefix("::ffff:0:0:0/96") // RFC 2765: IPv4-translated
	compatibleIPv4  = netip.MustParsePrefix("::/96")           // RFC 4291: IPv4-compatible (deprecated)
	sixToFourPrefix = netip.MustParsePrefix("2002::/16")       // RFC 3056: 6to4, the site's IPv4 in bits 16-47
	teredoPrefix    = netip.MustParsePrefix("2001::/32")       // RFC 4380: Teredo, the client's IPv4 inverted in the last 32 bits
)

// Embedded is the IPv4 client an IPv6 address stands for, when it carries
// one: the well-known NAT64 prefix 64:ff9b::/96 (behind SIIT or NAT64 every
// IPv4 client arrives so, and a /64 would make all of them one client), an
// IPv4-translated or IPv4-compatible address, 6to4 (2002:V4ADDR::/48: one
// IPv4 address has 2^16 /64s) and Teredo (the client's public IPv4 and
// port, obfuscated, after its server's address: a /64 would be every
// client of a Teredo server). Other addresses are returned as they are.
func Embedded(a netip.Addr) netip.Addr {
	if !a.Is6() {
		return a
	}
	b := a.As16()
	switch {
	case nat64Prefix.Contains(a), translatedIPv4.Contains(a):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	case compatibleIPv4.Contains(a):
		// :: and ::1 are IPv6's own, and so is any address below
		// 0.1.0.0 (nothing on the internet writes an IPv4 client so).
		if b[12] == 0 && b[13] == 0 {
			return a
		}
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	case sixToFourPrefix.Contains(a):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
	case teredoPrefix.Contains(a):
		return netip.AddrFrom4([4]byte{b[12] ^ 0xff, b[13] ^ 0xff, b[14] ^ 0xff, b[15] ^ 0xff})
	}
	return a
}
