package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared()
	os.Exit(code)
}

// openStore returns an empty store of one kind, closed when the test ends.
type openStore func(t *testing.T) Store

// uniq makes URLs and bucket names of this run, so that stores shared
// between tests (Redis) hold nothing a test did not put there.
func uniq(t *testing.T) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// entryFor builds a stored 200 for r.
func entryFor(r *http.Request, body string, ttl, stale time.Duration, now time.Time, buckets ...string) *Entry {
	return NewEntry(200, hdr("Content-Type", "text/plain"), []byte(body),
		Decision{Store: true, TTL: ttl, Buckets: buckets}, r.Header, now, stale)
}

// runStoreCases is the table every Store passes.
func runStoreCases(t *testing.T, open openStore) {
	ctx := context.Background()
	t.Run("get set replace", func(t *testing.T) {
		s := open(t)
		u := uniq(t)
		r := req("GET", "http://api.example/"+u)
		k := KeyOf(r, "z", nil)
		if e, err := s.Get(ctx, k, t0); e != nil || err != nil {
			t.Fatalf("empty store: %v %v", e, err)
		}
		if err := s.Set(ctx, k, entryFor(r, "one", time.Minute, 0, t0), t0); err != nil {
			t.Fatal(err)
		}
		e, err := s.Get(ctx, k, t0.Add(time.Second))
		if err != nil || e == nil || string(e.Body) != "one" || e.Status != 200 || !e.Stored.Equal(t0) || e.TTL != time.Minute {
			t.Fatalf("get: %+v %v", e, err)
		}
		if e.Header.Get("Content-Type") != "text/plain" || e.ETag == "" || e.ContentLength() != "3" {
			t.Fatalf("headers %v etag %q", e.Header, e.ETag)
		}
		if err := s.Set(ctx, k, entryFor(r, "two", time.Minute, 0, t0), t0); err != nil {
			t.Fatal(err)
		}
		if e, _ := s.Get(ctx, k, t0); e == nil || string(e.Body) != "two" {
			t.Fatalf("replace: %+v", e)
		}
		other := KeyOf(req("GET", "http://api.example/"+u+"?x"), "z", nil)
		if e, _ := s.Get(ctx, other, t0); e != nil {
			t.Fatal("another key answers")
		}
	})
	t.Run("stale kept until expiry", func(t *testing.T) {
		s := open(t)
		r := req("GET", "http://api.example/"+uniq(t))
		k := KeyOf(r, "z", nil)
		if err := s.Set(ctx, k, entryFor(r, "s", time.Minute, time.Hour, t0), t0); err != nil {
			t.Fatal(err)
		}
		e, err := s.Get(ctx, k, t0.Add(30*time.Minute))
		if err != nil || e == nil || e.Fresh(t0.Add(30*time.Minute)) || !e.Usable(t0.Add(30*time.Minute)) {
			t.Fatalf("stale entry: %+v %v", e, err)
		}
	})
	t.Run("variants and their index", func(t *testing.T) {
		s := open(t)
		r := req("GET", "http://api.example/"+uniq(t))
		k := KeyOf(r, "z", nil)
		vary := hdr("Vary", "Accept-Encoding")
		var last *Entry
		for _, ae := range []string{"gzip", "br", ""} {
			h := hdr("Accept-Encoding", ae)
			if ae == "" {
				h = hdr()
			}
			e := NewEntry(200, vary, []byte("body for "+ae), Decision{Store: true, TTL: time.Minute}, h, t0, 0)
			if err := s.Set(ctx, VariantKey(k, e.Vary, h), e, t0); err != nil {
				t.Fatal(err)
			}
			last = e
		}
		if err := s.Set(ctx, k, NewIndex(last, nil), t0); err != nil {
			t.Fatal(err)
		}
		idx, err := s.Get(ctx, k, t0)
		if err != nil || idx == nil || !idx.Index || len(idx.Vary) != 1 || idx.Vary[0] != "Accept-Encoding" {
			t.Fatalf("index: %+v %v", idx, err)
		}
		for spelling, want := range map[string]string{"GZIP;q=1": "gzip", "x-gzip, made-up": "gzip", "br": "br", "": ""} {
			h := hdr("Accept-Encoding", spelling)
			if spelling == "" {
				h = hdr()
			}
			e, err := s.Get(ctx, VariantKey(k, idx.Vary, h), t0)
			if err != nil || e == nil || string(e.Body) != "body for "+want || !e.Matches(h) {
				t.Fatalf("variant for %q: %+v %v", spelling, e, err)
			}
		}
	})
	t.Run("purge by bucket", func(t *testing.T) {
		s := open(t)
		u := uniq(t)
		var keys []Key
		for i, b := range [][]string{{"user:" + u}, {"user:" + u, "route:" + u}, {"route:" + u}, nil} {
			r := req("GET", "http://api.example/"+u+"/"+string(rune('a'+i)))
			k := KeyOf(r, "z", nil)
			keys = append(keys, k)
			if err := s.Set(ctx, k, entryFor(r, "b", time.Minute, 0, t0, b...), t0); err != nil {
				t.Fatal(err)
			}
		}
		n, err := s.Purge(ctx, Purge{Buckets: []string{"user:" + u}})
		if err != nil || n != 2 {
			t.Fatalf("purged %d, %v", n, err)
		}
		present := func() (out []bool) {
			for _, k := range keys {
				e, err := s.Get(ctx, k, t0)
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, e != nil)
			}
			return out
		}
		if p := present(); p[0] || p[1] || !p[2] || !p[3] {
			t.Fatalf("after purge of user: %v", p)
		}
		if n, err := s.Purge(ctx, Purge{Buckets: []string{"route:" + u, "none:" + u}}); err != nil || n != 1 {
			t.Fatalf("second purge %d %v", n, err)
		}
		if p := present(); p[2] || !p[3] {
			t.Fatalf("after purge of route: %v", p)
		}
		if n, err := s.Purge(ctx, Purge{Buckets: []string{"route:" + u}}); err != nil || n != 0 {
			t.Fatalf("purge again: %d %v", n, err)
		}
	})
	t.Run("purge by authorization", func(t *testing.T) {
		s := open(t)
		u := uniq(t)
		alice, bob := "Bearer alice-"+u, "Bearer bob-"+u
		var keys []Key
		for _, auth := range []string{alice, alice, bob, ""} {
			r := req("GET", "http://api.example/"+u+"/"+string(rune('a'+len(keys))))
			if auth != "" {
				r.Header.Set("Authorization", auth)
			}
			k := KeyOf(r, "z", nil)
			keys = append(keys, k)
			if err := s.Set(ctx, k, entryFor(r, "a", time.Minute, 0, t0), t0); err != nil {
				t.Fatal(err)
			}
		}
		n, err := s.Purge(ctx, Purge{Auths: []Hash{AuthHash(alice)}})
		if err != nil || n != 2 {
			t.Fatalf("purged %d, %v", n, err)
		}
		for i, want := range []bool{false, false, true, true} {
			if e, _ := s.Get(ctx, keys[i], t0); (e != nil) != want {
				t.Fatalf("entry %d present %v", i, e != nil)
			}
		}
	})
	t.Run("purge within a shard", func(t *testing.T) {
		s := open(t)
		u := uniq(t)
		var keys []Key
		for _, shard := range []string{"0", "3", "15"} {
			r := req("GET", "http://api.example/"+u, HeaderShard, shard)
			k := KeyOf(r, "z", nil)
			keys = append(keys, k)
			if err := s.Set(ctx, k, entryFor(r, shard, time.Minute, 0, t0, "b"+u), t0); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := s.Purge(ctx, Purge{Buckets: []string{"b" + u}, Shards: []uint8{3}}); err != nil || n != 1 {
			t.Fatalf("shard 3: %d %v", n, err)
		}
		if e, _ := s.Get(ctx, keys[1], t0); e != nil {
			t.Fatal("shard 3 entry survived")
		}
		if n, err := s.Purge(ctx, Purge{Buckets: []string{"b" + u}}); err != nil || n != 2 {
			t.Fatalf("all shards: %d %v", n, err)
		}
	})
}

func openMemory(t *testing.T) Store {
	m := NewMemory(MemoryOptions{})
	t.Cleanup(func() { m.Close() })
	return m
}

func TestMemoryStore(t *testing.T) { runStoreCases(t, openMemory) }
