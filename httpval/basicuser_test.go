package httpval

import (
	"encoding/base64"
	"net/http"
	"testing"
)

// TestBasicUser: the user of every credential Go's BasicAuth accepts is
// the one it reads, whatever the password; what it refuses may count too,
// never as another user.
func TestBasicUser(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, c := range []struct{ auth, want string }{
		{"Basic " + b64("alice:wrong"), "alice"},
		{"Basic " + b64("alice:other:colon"), "alice"},
		{"basic " + b64("alice:x"), "alice"},
		{"BASIC  " + b64("alice:x"), "alice"},
		{" \tBasic " + b64("alice:x") + " ", "alice"},
		// Spellings other decoders take (no padding, URL-safe): the same
		// user (httpval.Credentials writes them one way).
		{"Basic " + base64.RawStdEncoding.EncodeToString([]byte("alice:x")), "alice"},
		{"Basic " + base64.URLEncoding.EncodeToString([]byte("alice:x?>")), "alice"},
		{"Basic " + b64(":nobody"), ""},
		{"Basic " + b64("no-colon"), ""},
		{"Basic not*base64", ""},
		{"Bearer " + b64("alice:x"), ""},
		{"", ""},
	} {
		h := http.Header{"Authorization": {c.auth, "Basic " + b64("mallory:x")}}
		if got := BasicUser(h); got != c.want {
			t.Errorf("%q: %q, want %q", c.auth, got, c.want)
		}
		r := &http.Request{Header: h}
		if user, _, ok := r.BasicAuth(); ok && user != BasicUser(h) {
			t.Errorf("%q: Go reads user %q, BasicUser %q", c.auth, user, BasicUser(h))
		}
	}
}
