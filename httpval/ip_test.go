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
