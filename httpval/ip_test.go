package httpval

import "testing"

func TestIPKey(t *testing.T) {
	for _, c := range []struct {
		in   string
		bits int
		want string
	}{
		{"203.0.113.77", 64, "203.0.113.77"},
		{"::ffff:203.0.113.77", 64, "203.0.113.77"},
		{"2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:2:bbbb:cccc:dddd:eeee", 64, "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", 64, "2001:db8:1:3::/64"},
		{"2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"},
		{"2001:db8:1:2:aaaa::1", 128, "2001:db8:1:2:aaaa::1"},
		{"fe80::1%eth0", 64, "fe80::/64"},
		// Spellings of one address (upper-case hex, leading zeros, a
		// zone, mapped IPv4 in capitals) are one key, even at /128.
		{"FE80:0000::0001%eth9", 128, "fe80::1"},
		{"2001:0DB8:0001:0002:0000:0000:0000:0001", 128, "2001:db8:1:2::1"},
		{"::FFFF:CB00:714D", 64, "203.0.113.77"},
		// IPv4 clients carried in IPv6 addresses count as those IPv4
		// addresses: behind SIIT/NAT64 (64:ff9b::/96) a /64 made every
		// IPv4 client one; 6to4 gives one IPv4 address 2^16 /64s;
		// Teredo puts every client of a server in one /64.
		{"64:ff9b::cb00:7101", 64, "203.0.113.1"},
		{"64:ff9b::203.0.113.2", 64, "203.0.113.2"},
		{"64:ff9b::203.0.113.2", 128, "203.0.113.2"},
		{"2002:cb00:7101:1::1", 64, "203.0.113.1"},
		{"2002:cb00:7101:ffff:1:2:3:4", 64, "203.0.113.1"},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", 64, "192.0.2.45"},
		{"2001:0:4136:e378:1234:5678:3fff:fdd2", 64, "192.0.2.45"},
		{"::203.0.113.3", 64, "203.0.113.3"},
		{"::ffff:0:203.0.113.4", 64, "203.0.113.4"},
		{"::1", 64, "::/64"},
		{"::1", 128, "::1"},
		{"64:ff9b:1::1", 64, "64:ff9b:1::/64"},
		{"2001:db8::1", 64, "2001:db8::/64"},
		{"nonsense", 64, ""},
		{"", 64, ""},
	} {
		if got := IPKey(c.in, c.bits); got != c.want {
			t.Errorf("IPKey(%q, %d) = %q, want %q", c.in, c.bits, got, c.want)
		}
	}
	if got := IP("::ffff:10.0.0.1"); got != "10.0.0.1" {
		t.Errorf("IP of a mapped address: %q", got)
	}
}
