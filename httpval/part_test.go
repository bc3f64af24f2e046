package httpval

import (
	"net/http/httptest"
	"testing"
)

// TestValue: what each kind of part reads, as both edges read it.
func TestValue(t *testing.T) {
	r := httptest.NewRequest("GET", "/?page=2&key=k1&key=k2", nil)
	r.RemoteAddr = "[2001:db8:1:2:3:4:5:6]:443"
	r.Header.Add("X-Api-Key", " first\t")
	r.Header.Add("X-Api-Key", "second")
	r.Header.Set("Authorization", "basic dXNlcjpwYXNz")
	r.Header.Set("X-Forwarded-For", "192.0.2.7")
	// The cookie spelled another way first: the upstream reads session.
	r.Header.Set("Cookie", "SESSION=rotated; session=s1; session=s2")
	depth, _ := NewForwarded(1, nil)
	cases := []struct {
		p    Part
		ips  *Forwarded
		want string
	}{
		{Part{Kind: KindHeader, Name: "X-Api-Key"}, nil, "first"},
		{Part{Kind: KindHeader, Name: "Authorization"}, nil, "Basic dXNlcjpwYXNz"},
		{Part{Kind: KindHeader, Name: "X-Missing"}, nil, ""},
		{Part{Kind: KindClient, V6: 64}, nil, "2001:db8:1:2::/64"},
		{Part{Kind: KindClient, V6: 128}, nil, "2001:db8:1:2:3:4:5:6"},
		{Part{Kind: KindClient, V6: 64}, depth, "192.0.2.7"},
		{Part{Kind: KindRemote, V6: 48}, depth, "2001:db8:1::/48"},
		{Part{Kind: KindBasicUser}, nil, "user"},
		{Part{Kind: KindConst, Name: "all"}, nil, "all"},
		{Part{Kind: KindQuery, Name: "key"}, nil, "k1"},
		{Part{Kind: KindQuery, Name: "Key"}, nil, ""},
		{Part{Kind: KindCookie, Name: "session"}, nil, "s1"},
		{Part{Kind: KindCookie, Name: "Session"}, nil, ""},
		{Part{Kind: KindEdge, Name: "X-Api-Key"}, nil, ""},
	}
	for _, c := range cases {
		if got := Value(&c.p, r, c.ips); got != c.want {
			t.Errorf("%+v: %q, want %q", c.p, got, c.want)
		}
	}
}

// TestRemoteKey: the remote host, unparsed, makes the key that the
// address parsed makes (RemoteIP, Caddy's client_ip), and an IPv4 one is
// read without an allocation.
func TestRemoteKey(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	for _, addr := range []string{"192.0.2.1:80", "[::ffff:192.0.2.1]:80", "[fe80::1%eth0]:80", "[2001:db8::1]:80",
		"[64:ff9b::c000:201]:80", "192.0.2.1", "@", ""} {
		r.RemoteAddr = addr
		if got, want := ClientKey(RemoteHost(r), 64), ClientKey(RemoteIP(r), 64); got != want {
			t.Errorf("%q: %q, want %q", addr, got, want)
		}
	}
	r.RemoteAddr = "192.0.2.1:80"
	p := &Part{Kind: KindRemote, V6: 64}
	// Holds under -race too: this path has no sync.Pool (which the race
	// detector empties at random) and nothing else whose allocations
	// depend on it; the race detector's instrumentation allocates nothing.
	if n := testing.AllocsPerRun(100, func() { Value(p, r, nil) }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

// TestCheckName: a header's or a cookie's name that no request carries,
// or a query parameter without a name, is refused: its key would never
// apply, silently.
func TestCheckName(t *testing.T) {
	for _, p := range []Part{
		{Kind: KindHeader, Name: "X-Api-Key"}, {Kind: KindCookie, Name: "session_id"},
		{Kind: KindCookie, Name: "__Host-sid"}, {Kind: KindQuery, Name: "api key"},
		{Kind: KindConst, Name: "a b;c"}, {Kind: KindClient},
	} {
		if err := CheckName(&p); err != nil {
			t.Errorf("%+v: %v", p, err)
		}
	}
	for _, p := range []Part{
		{Kind: KindCookie, Name: "a;b"}, {Kind: KindCookie, Name: " sid"}, {Kind: KindCookie, Name: "a=b"},
		{Kind: KindHeader, Name: "X Api"}, {Kind: KindHeader, Name: "X-Api:"}, {Kind: KindHeader, Name: "é"},
		{Kind: KindCookie}, {Kind: KindQuery},
	} {
		if err := CheckName(&p); err == nil {
			t.Errorf("%+v: accepted", p)
		}
	}
}
