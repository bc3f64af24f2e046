package httpval

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestForwarded(t *testing.T) {
	req := func(xff ...string) *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = "10.0.0.9:1"
		for _, v := range xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		return r
	}
	depth, _ := NewForwarded(1, nil)
	excl, err := NewForwarded(0, []string{"10.0.0.0/8", "::ffff:192.0.2.1"})
	if err != nil {
		t.Fatal(err)
	}
	var none *Forwarded
	zero, _ := NewForwarded(0, nil)
	cases := []struct {
		s    *Forwarded
		r    *http.Request
		want string
	}{
		{none, req("1.2.3.4"), "10.0.0.9"},
		{zero, req("1.2.3.4"), "10.0.0.9"},
		{depth, req("1.2.3.4, 5.6.7.8"), "5.6.7.8"},
		{depth, req("1.2.3.4", "5.6.7.8"), "5.6.7.8"},
		{depth, req(), "10.0.0.9"},
		{depth, req("garbage"), "10.0.0.9"},
		{excl, req("1.2.3.4, 10.1.1.1, 192.0.2.1"), "1.2.3.4"},
		{excl, req("10.1.1.1"), "10.0.0.9"},
		// A proxy that writes the client's port too (Azure's Application
		// Gateway, some load balancers), as Caddy's trusted_proxies reads
		// it: the client's address, not the proxy's for every client.
		{depth, req("1.2.3.4, 5.6.7.8:51234"), "5.6.7.8"},
		{depth, req("[2001:db8::7]:443"), "2001:db8::7"},
		{depth, req("[::ffff:5.6.7.8]:1"), "5.6.7.8"},
		{excl, req("1.2.3.4:80, 10.1.1.1:80"), "1.2.3.4"},
	}
	for i, c := range cases {
		if got := ClientIP(c.s, c.r); got != c.want {
			t.Errorf("case %d: %s, want %s", i, got, c.want)
		}
	}
	if _, err := NewForwarded(0, []string{"nope"}); err == nil {
		t.Error("a bad excluded IP is refused")
	}
	if _, err := NewForwarded(-1, nil); err == nil {
		t.Error("a negative depth is refused")
	}
}
