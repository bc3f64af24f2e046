package cache

import (
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"testing"
)

func req(method, target string, headers ...string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	return r
}

func TestKeyOf(t *testing.T) {
	base := KeyOf(req("GET", "http://api.example/v1/users?page=2"), "z", nil)
	same := []*http.Request{
		req("GET", "http://api.example/v1/users?page=2"),
		req("HEAD", "http://api.example/v1/users?page=2"),
		req("GET", "http://api.example/v1/users?page=2", "Accept", "text/html"), // not in the key: Vary decides
		req("GET", "http://api.example/v1/users?page=2", HeaderShard, "0"),
		req("GET", "http://api.example/v1/users?page=2", HeaderShard, "16"), // invalid: shard 0, as Bloom
		req("GET", "http://api.example/v1/users?page=2", HeaderShard, "x"),
		req("GET", "http://api.example/v1/users?page=2", "Authorization", ""), // empty: anonymous
		req("GET", "http://api.example/v1/users?page=2", "X-Api-Key", " "),
	}
	for i, r := range same {
		if k := KeyOf(r, "z", nil); k != base {
			t.Errorf("same[%d] %s %s %v: key differs", i, r.Method, r.URL, r.Header)
		}
	}
	differ := map[string]Key{
		"OPTIONS":       KeyOf(req("OPTIONS", "http://api.example/v1/users?page=2"), "z", nil),
		"POST":          KeyOf(req("POST", "http://api.example/v1/users?page=2"), "z", nil),
		"host":          KeyOf(req("GET", "http://other.example/v1/users?page=2"), "z", nil),
		"path":          KeyOf(req("GET", "http://api.example/v1/user?page=2"), "z", nil),
		"encoded path":  KeyOf(req("GET", "http://api.example/v1%2Fusers?page=2"), "z", nil),
		"query":         KeyOf(req("GET", "http://api.example/v1/users?page=3"), "z", nil),
		"no query":      KeyOf(req("GET", "http://api.example/v1/users"), "z", nil),
		"zone":          KeyOf(req("GET", "http://api.example/v1/users?page=2"), "y", nil),
		"shard 1":       KeyOf(req("GET", "http://api.example/v1/users?page=2", HeaderShard, "1"), "z", nil),
		"shard 15":      KeyOf(req("GET", "http://api.example/v1/users?page=2", HeaderShard, "15"), "z", nil),
		"auth a":        KeyOf(req("GET", "http://api.example/v1/users?page=2", "Authorization", "Bearer a"), "z", nil),
		"auth b":        KeyOf(req("GET", "http://api.example/v1/users?page=2", "Authorization", "Bearer b"), "z", nil),
		"api key a":     KeyOf(req("GET", "http://api.example/v1/users?page=2", "X-Api-Key", "a"), "z", nil),
		"api key b":     KeyOf(req("GET", "http://api.example/v1/users?page=2", "X-Api-Key", "b"), "z", nil),
		"auth token a":  KeyOf(req("GET", "http://api.example/v1/users?page=2", "X-Auth-Token", "a"), "z", nil),
		"identity":      KeyOf(req("GET", "http://api.example/v1/users?page=2"), "z", []string{"u1"}),
		"identity 2":    KeyOf(req("GET", "http://api.example/v1/users?page=2"), "z", []string{"u2"}),
		"identity none": KeyOf(req("GET", "http://api.example/v1/users?page=2"), "z", []string{""}),
		"origin":        KeyOf(req("GET", "http://api.example/v1/users?page=2", "Origin", "https://a.example"), "z", nil),
		"range":         KeyOf(req("GET", "http://api.example/v1/users?page=2", "Range", "bytes=0-9"), "z", nil),
	}
	seen := map[Hash]string{base.ID: "base"}
	for name, k := range differ {
		if other, dup := seen[k.ID]; dup {
			t.Errorf("%s has the key of %s", name, other)
		}
		seen[k.ID] = name
	}
	// Field boundaries are length-prefixed: moving a byte from one field
	// to the next makes another key.
	a := KeyOf(req("GET", "http://api.example/ab?c"), "z", []string{"x", "y"})
	b := KeyOf(req("GET", "http://api.example/ab?c"), "z", []string{"xy"})
	if a.ID == b.ID {
		t.Error("identity [x y] and [xy] share a key")
	}
}

// TestKeyOfPreflight: a CORS preflight is keyed on the method and the
// headers it asks for, as it wrote them: an upstream may read another
// spelling of the list otherwise (browsers write one question one way).
func TestKeyOfPreflight(t *testing.T) {
	pre := func(headers ...string) Key {
		h := append([]string{"Origin", "https://app.example"}, headers...)
		return KeyOf(req("OPTIONS", "http://api.example/items", h...), "z", nil)
	}
	put := pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization,content-type")
	if again := pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization,content-type"); again != put {
		t.Error("one preflight, two keys")
	}
	for i, k := range []Key{
		pre("Access-Control-Request-Method", " PUT", "Access-Control-Request-Headers", "authorization,content-type"),
		pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "Authorization,Content-Type"),
		pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization, content-type"),
		pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "content-type,authorization"),
		pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization,,content-type"),
		pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization,content-type,content-type"),
		pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization", "Access-Control-Request-Headers", "content-type"),
	} {
		if k == put {
			t.Errorf("spelling %d has the browsers' key", i)
		}
	}
	seen := map[Hash]string{put.ID: "PUT with two headers"}
	for name, k := range map[string]Key{
		"no preflight":       pre(),
		"DELETE":             pre("Access-Control-Request-Method", "DELETE", "Access-Control-Request-Headers", "authorization,content-type"),
		"put":                pre("Access-Control-Request-Method", "put", "Access-Control-Request-Headers", "authorization,content-type"),
		"PUT alone":          pre("Access-Control-Request-Method", "PUT"),
		"PUT, x-nothing":     pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "x-nothing"),
		"PUT, one header":    pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "content-type"),
		"PUT, three headers": pre("Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization,content-type,x-a"),
	} {
		if other, dup := seen[k.ID]; dup {
			t.Errorf("%s has the key of %s", name, other)
		}
		seen[k.ID] = name
	}
}

func TestKeyAuthorizationIsHashed(t *testing.T) {
	const cred = "Basic dXNlcjpwYXNzd29yZA=="
	k := KeyOf(req("GET", "http://api.example/me", "Authorization", cred), "z", nil)
	if !k.HasAuth || k.Auth != Hash(sha256.Sum256([]byte(cred))) || k.Auth != AuthHash(cred) {
		t.Fatalf("auth hash %s, has %v", k.Auth, k.HasAuth)
	}
	// The same credential as the upstream reads it: one entry, one purge.
	for _, spelled := range []string{"basic dXNlcjpwYXNzd29yZA==", "BASIC\tdXNlcjpwYXNzd29yZA== ", " Basic  dXNlcjpwYXNzd29yZA=="} {
		if k2 := KeyOf(req("GET", "http://api.example/me", "Authorization", spelled), "z", nil); k2 != k || AuthHash(spelled) != k.Auth {
			t.Fatalf("%q is another key than %q", spelled, cred)
		}
	}
	if k := KeyOf(req("GET", "http://api.example/me"), "z", nil); k.HasAuth || k.Auth != (Hash{}) {
		t.Fatal("anonymous request has an authorization hash")
	}
	h, err := ParseHash(k.Auth.String())
	if err != nil || h != k.Auth {
		t.Fatalf("ParseHash: %v", err)
	}
	for _, bad := range []string{"", "zz", k.Auth.String()[1:], k.Auth.String() + "0", "g" + k.Auth.String()[1:]} {
		if _, err := ParseHash(bad); err == nil {
			t.Errorf("ParseHash(%q) accepted", bad)
		}
	}
}

func TestParseShard(t *testing.T) {
	for in, want := range map[string]uint8{"0": 0, "7": 7, "9": 9, "10": 10, "15": 15, "16": 0, "-1": 0, "": 0, "01": 0, " 3": 0, "a": 0} {
		if got := ParseShard([]string{in}); got != want {
			t.Errorf("ParseShard(%q) = %d, want %d", in, got, want)
		}
	}
	if ParseShard(nil) != 0 || ParseShard([]string{"1", "2"}) != 0 {
		t.Error("missing or repeated header is not shard 0")
	}
}

// KeyOf hashes from a stack buffer, not a sync.Pool: the count holds under
// the race detector, which drops pooled items at random (with two pooled
// buffers per call this failed about one run in two under -race).
func TestKeyOfAllocatesNothing(t *testing.T) {
	r := req("GET", "http://api.example/v1/users?page=2", "Authorization", "Bearer token", "Origin", "https://a.example")
	if n := testing.AllocsPerRun(100, func() { KeyOf(r, "zone", nil) }); n != 0 {
		t.Fatalf("KeyOf allocates %v times", n)
	}
}
