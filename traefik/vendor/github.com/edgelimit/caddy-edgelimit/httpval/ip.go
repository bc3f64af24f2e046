package httpval

import (
	"fmt"
	"net/netip"
	"strings"
)

// DefaultIPv6Prefix is the length of the IPv6 prefix that identifies one
// client: a /64 is what one subscriber or one host is given, and its 2^64
// addresses are all the same client's.
const DefaultIPv6Prefix = 64

// IP is s as an address, written one way ("" when s is none): without a
// zone, and an IPv4 address mapped into IPv6 written as IPv4.
func IP(s string) string {
	a, err := netip.ParseAddr(stripZone(s))
	if err != nil {
		return ""
	}
	return a.Unmap().String()
}

// IPKey is the client a key of the address s counts ("" when s is no
// address): an IPv4 address as it is (mapped into IPv6 or not), an IPv6
// address as its prefix of v6Bits bits (1 to 128; 128 is the address), so
// that a client cannot make new counters by changing the addresses its
// network gives it.
func IPKey(s string, v6Bits int) string {
	a, err := netip.ParseAddr(stripZone(s))
	if err != nil {
		return ""
	}
	a = a.Unmap()
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
