package httpval

import (
	"net/http"
	"testing"
)

func TestCredentials(t *testing.T) {
	for in, want := range map[string]string{
		"Bearer abc":      "Bearer abc",
		"bearer abc":      "Bearer abc",
		"BEARER  abc":     "Bearer abc",
		"Bearer\tabc":     "Bearer abc",
		"Bearer \t\t abc": "Bearer abc",
		"Basic dXNlcg==":  "Basic dXNlcg==",
		"DPoP xyz":        "Dpop xyz",
		"token":           "Token",
		"Basic":           "Basic",
		"":                "",
		"Bearer a b":      "Bearer a b",
	} {
		if got := Credentials(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	// Nothing here is pooled, so the count holds under the race detector
	// too (which drops sync.Pool items at random).
	if n := testing.AllocsPerRun(100, func() { _ = Credentials("Bearer abc") }); n != 0 {
		t.Errorf("a canonical value allocates %v times", n)
	}
}

func TestFirst(t *testing.T) {
	h := http.Header{
		"Authorization": {" \tbearer\tA1  ", "junk"},
		"X-Api-Key":     {"K1 \t", "K2"},
		"X-Empty":       {""},
	}
	for name, want := range map[string]string{"Authorization": "Bearer A1", "X-Api-Key": "K1", "X-Empty": "", "X-None": ""} {
		if got := First(h, name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	// Holds under the race detector too: nothing is pooled.
	if n := testing.AllocsPerRun(100, func() { _ = First(h, "X-Api-Key") }); n != 0 {
		t.Errorf("First allocates %v times", n)
	}
}
