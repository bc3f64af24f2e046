package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/httpval"
)

// TestCompileIPv6Prefix: the limit's IPv6 prefix is checked and its
// default resolved once, for both edges' key parts.
func TestCompileIPv6Prefix(t *testing.T) {
	spec := func(bits int) *Spec {
		return &Spec{Name: "l", Numbers: Numbers{Limit: 5, Window: time.Minute}, IPv6Prefix: bits}
	}
	for bits, want := range map[int]int{0: httpval.DefaultIPv6Prefix, 48: 48, 128: 128} {
		l, err := Compile(spec(bits), "g")
		if err != nil || l.IPv6Prefix != want {
			t.Errorf("%d: %v, %v, want %d", bits, l, err, want)
		}
	}
	for _, bits := range []int{-1, 129} {
		if _, err := Compile(spec(bits), "g"); err == nil || !strings.Contains(err.Error(), "IPv6 prefix") {
			t.Errorf("%d: %v, want an error naming the IPv6 prefix", bits, err)
		}
	}
}
