package httpval

import (
	"encoding/base64"
	"net/http"
	"strings"
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
		// Basic tokens: the bits after the last byte, the padding, the
		// URL-safe alphabet; a token no decoder takes stays as it is.
		"Basic Y2Fyb2wxOnNlY3JldP==": "Basic Y2Fyb2wxOnNlY3JldA==",
		"basic  Y2Fyb2wxOnNlY3JldB":  "Basic Y2Fyb2wxOnNlY3JldA==",
		"Basic Pz8-":                 "Basic Pz8+",
		"Basic Pz8_Pw":               "Basic Pz8/Pw==",
		"Basic not*base64":           "Basic not*base64",
		"BASIC not*base64":           "Basic not*base64",
	} {
		if got := Credentials(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	// Nothing here is pooled, so the count holds under the race detector
	// too (which drops sync.Pool items at random).
	for _, v := range []string{"Bearer abc", "Basic Y2Fyb2wxOnNlY3JldA=="} {
		if n := testing.AllocsPerRun(100, func() { _ = Credentials(v) }); n != 0 {
			t.Errorf("%q, written canonically, allocates %v times", v, n)
		}
	}
	// A token longer than the stack buffers: the same spelling.
	payload := []byte(strings.Repeat("user:", 30) + "pw")
	std := base64.StdEncoding.EncodeToString(payload)
	raw := base64.RawURLEncoding.EncodeToString(payload)
	if raw == std || len(std) <= 128 {
		t.Fatal("the long token is not what the test needs")
	}
	for _, v := range []string{std, raw} {
		if got := Credentials("Basic " + v); got != "Basic "+std {
			t.Errorf("long token %q: %q, want %q", v, got, std)
		}
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
