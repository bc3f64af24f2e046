package edgelimit

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMissingKeysAndHostileKeys(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit users {
			key {http.auth.user.id} {header.X-User}
			rate 1/1m
		}
	}
	respond "ok"
}`)
	// No key part present: the limit does not apply at all.
	for range 3 {
		expect(t, s.get("/"), 200, "X-RateLimit-Limit", "")
	}
	expect(t, s.get("/", "X-User", "u1"), 200, "X-RateLimit-Remaining", "0")
	expect(t, s.get("/", "X-User", "u1"), 429)
	// A huge header is a key like any other; it costs no more memory.
	huge := strings.Repeat("A", 16<<10)
	expect(t, s.get("/", "X-User", huge), 200)
	expect(t, s.get("/", "X-User", huge), 429)
	expect(t, s.get("/", "X-User", huge[1:]), 200)
}

// sendWith sends GET path with each header name and value pair added (a
// name may repeat) and returns the status and the body.
func sendWith(t *testing.T, s *site, path string, headers ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := s.tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRepeatedCredentialHeaderCountsTheFirst: a limit keyed on a
// credential counts what the upstream acts on. A second Authorization
// header with junk in it made a new counter each time (the key joined
// every value) while the upstream, reading the first, served the same
// token six times out of a limit of two.
func TestRepeatedCredentialHeaderCountsTheFirst(t *testing.T) {
	fakeClock(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("Authorization"))
	}))
	defer upstream.Close()
	s := startSite(t, `
%ADDR% {
	edge_limit {
		limit per_token {
			key {header.Authorization} {client_ip}
			rate 2/1h
		}
	}
	reverse_proxy `+upstream.Listener.Addr().String()+`
}`)
	var statuses []int
	for i := range 6 {
		code, body := sendWith(t, s, "/", "Authorization", "Bearer A1", "Authorization", fmt.Sprintf("junk%d", i))
		if code == 200 && body != "Bearer A1" {
			t.Fatalf("the upstream saw %q", body)
		}
		statuses = append(statuses, code)
	}
	if fmt.Sprint(statuses) != "[200 200 429 429 429 429]" {
		t.Fatalf("one token with a second, changing Authorization header: %v, want 2 of 6 admitted", statuses)
	}
	// Another token is another client.
	if code, _ := sendWith(t, s, "/", "Authorization", "Bearer B2"); code != 200 {
		t.Fatalf("another token: %d", code)
	}
}

// TestAuthSchemeCaseIsOneCounter: behind basic_auth, the scheme's case
// ("basic", "BASIC", "bAsic") made a new counter each time for the same
// user.
func TestAuthSchemeCaseIsOneCounter(t *testing.T) {
	fakeClock(t)
	s := startSite(t, `
%ADDR% {
	basic_auth {
		user-1 $2a$10$m7I2QCfjgwd4cnOT8yKROefDVHngy/wDlfq6tmcCVrDdpGFok1WdG
	}
	edge_limit {
		limit per_credential {
			key {header.Authorization}
			rate 3/1h
		}
	}
	respond "ok"
}`)
	cred := base64.StdEncoding.EncodeToString([]byte("user-1:user-secret"))
	var statuses []int
	for _, scheme := range []string{"Basic ", "basic ", "BASIC ", "bAsic ", "BaSiC "} {
		code, _ := sendWith(t, s, "/", "Authorization", scheme+cred)
		statuses = append(statuses, code)
	}
	if fmt.Sprint(statuses) != "[200 200 200 429 429]" {
		t.Fatalf("one user, the scheme written five ways: %v, want 3 of 5 admitted", statuses)
	}
}

func TestCanonicalCredentials(t *testing.T) {
	for in, want := range map[string]string{
		"Bearer abc":     "Bearer abc",
		"bearer abc":     "Bearer abc",
		"BEARER  abc":    "Bearer abc",
		"Basic dXNlcg==": "Basic dXNlcg==",
		"DPoP xyz":       "Dpop xyz",
		"token":          "Token",
		"Basic":          "Basic",
		"":               "",
	} {
		if got := canonicalCredentials(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = canonicalCredentials("Bearer abc") }); n != 0 {
		t.Errorf("a canonical value allocates %v times", n)
	}
}
