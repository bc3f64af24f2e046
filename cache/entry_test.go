package cache

import (
	"bytes"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

// t0 is any instant: package cache never reads the real clock (every
// function takes its "now"), so these tests pass on any date.
var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

func TestNewEntryHeaders(t *testing.T) {
	up := hdr(
		"Content-Type", "application/json",
		"Connection", "X-Hop",
		"X-Hop", "1",
		"Keep-Alive", "timeout=5",
		"Transfer-Encoding", "chunked",
		"Date", "Mon, 23 Nov 2026 09:00:00 GMT",
		"Content-Length", "999",
		"Age", "3",
		"Bloom-Response-TTL", "30",
		"Bloom-Response-Buckets", "a",
		"Bloom-Status", "MISS",
		"X-Ratelimit-Remaining", "4",
		"Ratelimit", `"l";r=1;t=1`,
		"Vary", "Accept-Encoding, accept",
		"X-App", "a", "X-App", "b",
	)
	body := []byte(`{"ok":true}`)
	d := Decision{Store: true, TTL: time.Minute, Buckets: []string{"a"}}
	e := NewEntry(200, up, body, d, hdr("Accept-Encoding", "gzip", "Accept-Encoding", "br"), t0, time.Hour)
	want := []string{"Content-Type", "Etag", "Vary", "X-App"}
	var got []string
	for k := range e.Header {
		got = append(got, k)
	}
	if !sameSet(got, want) {
		t.Fatalf("stored headers %v, want %v", got, want)
	}
	if e.ContentLength() != "11" || e.HeaderValues() != 5 {
		t.Fatalf("content length %q, values %d", e.ContentLength(), e.HeaderValues())
	}
	if len(e.ETag) != 26 || e.ETag[0] != '"' || e.Header.Get("Etag") != e.ETag {
		t.Fatalf("etag %q", e.ETag)
	}
	if !reflect.DeepEqual(e.Vary, []string{"Accept-Encoding", "Accept"}) || !reflect.DeepEqual(e.VaryValues, []string{"br,gzip", ""}) {
		t.Fatalf("vary %q = %q", e.Vary, e.VaryValues)
	}
	body[0] = 'X'
	if e.Body[0] != '{' {
		t.Fatal("entry shares the caller's body")
	}
	// Same body, same fingerprint; the upstream's own ETag wins.
	if e2 := NewEntry(200, hdr(), []byte(`{"ok":true}`), d, nil, t0, 0); e2.ETag != e.ETag {
		t.Fatal("fingerprint is not of the body")
	}
	if e3 := NewEntry(200, hdr("ETag", `W/"v7"`), body, d, nil, t0, 0); e3.ETag != `W/"v7"` {
		t.Fatalf("upstream etag replaced: %q", e3.ETag)
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !contains(b, x) {
			return false
		}
	}
	return true
}

func TestEntryTimes(t *testing.T) {
	e := NewEntry(200, hdr(), nil, Decision{Store: true, TTL: time.Minute}, nil, t0, 5*time.Minute)
	for _, c := range []struct {
		at            time.Duration
		fresh, usable bool
		age           int64
	}{
		{0, true, true, 0},
		{59 * time.Second, true, true, 59},
		{time.Minute, false, true, 60},
		{6*time.Minute - 1, false, true, 359},
		{6 * time.Minute, false, false, 360},
	} {
		now := t0.Add(c.at)
		if e.Fresh(now) != c.fresh || e.Usable(now) != c.usable || e.Age(now) != c.age {
			t.Errorf("at +%v: fresh %v usable %v age %d", c.at, e.Fresh(now), e.Usable(now), e.Age(now))
		}
	}
	if e.Age(t0.Add(-time.Hour)) != 0 {
		t.Error("negative age")
	}
}

// TestEntryStaleWhileRevalidate: an entry is served while refreshed
// within its window past TTL, kept as long as the longer of its two stale
// windows, and served offline only within stale_if_error.
func TestEntryStaleWhileRevalidate(t *testing.T) {
	e := NewEntry(200, hdr(), []byte("x"), Decision{Store: true, TTL: time.Minute, SWR: 5 * time.Minute}, nil, t0, time.Minute)
	for _, c := range []struct {
		at                 time.Duration
		fresh, reval, used bool
	}{
		{0, true, false, true},
		{time.Minute - 1, true, false, true},
		{time.Minute, false, true, true},
		{2*time.Minute - 1, false, true, true},
		{2 * time.Minute, false, true, false},
		{6*time.Minute - 1, false, true, false},
		{6 * time.Minute, false, false, false},
	} {
		now := t0.Add(c.at)
		if e.Fresh(now) != c.fresh || e.Revalidating(now) != c.reval || e.Usable(now) != c.used {
			t.Errorf("at %v: fresh %v, revalidating %v, usable offline %v", c.at, e.Fresh(now), e.Revalidating(now), e.Usable(now))
		}
	}
	if e.Expires() != t0.Add(6*time.Minute) {
		t.Fatalf("expires %v after storing", e.Expires().Sub(t0))
	}
	b, _ := e.MarshalBinary()
	var back Entry
	if err := back.UnmarshalBinary(b); err != nil || back.SWR != e.SWR || b[0] != 3 {
		t.Fatalf("read back: window %v, version %d, %v", back.SWR, b[0], err)
	}
}

func TestEntryMatchesVary(t *testing.T) {
	up := hdr("Vary", "Accept-Encoding, X-Lang")
	e := NewEntry(200, up, nil, Decision{Store: true, TTL: time.Minute}, hdr("Accept-Encoding", "gzip", "Accept-Encoding", "br"), t0, 0)
	for _, c := range []struct {
		h    http.Header
		want bool
	}{
		{hdr("Accept-Encoding", "gzip", "Accept-Encoding", "br"), true},
		{hdr("Accept-Encoding", "gzip,br"), true},
		// Accept-Encoding is compared as the codings it accepts.
		{hdr("Accept-Encoding", "gzip,br,"), true},
		{hdr("Accept-Encoding", "BR;q=0.5 , x-gzip, made-up"), true},
		{hdr("Accept-Encoding", "*;q=0, br, gzip"), true},
		{hdr("Accept-Encoding", "gzip"), false},
		{hdr("Accept-Encoding", "gzip, br, deflate"), false},
		{hdr("Accept-Encoding", "gzip, br;q=0"), false},
		{hdr("Accept-Encoding", "gzip,br", "X-Lang", "fr"), false},
		{hdr(), false},
	} {
		if got := e.Matches(c.h); got != c.want {
			t.Errorf("Matches(%v) = %v", c.h, got)
		}
	}
	if plain := NewEntry(200, hdr(), nil, Decision{Store: true, TTL: time.Minute}, nil, t0, 0); !plain.Matches(hdr("X", "y")) {
		t.Error("an entry without Vary does not match")
	}
	// Without Accept-Encoding, any coding is acceptable (RFC 9110): that
	// is not "identity", which accepts none.
	none := NewEntry(200, hdr("Vary", "Accept-Encoding"), nil, Decision{Store: true, TTL: time.Minute}, hdr(), t0, 0)
	if !none.Matches(hdr()) || none.Matches(hdr("Accept-Encoding", "identity")) || none.Matches(hdr("Accept-Encoding", "gzip")) {
		t.Error("a response to a request without Accept-Encoding")
	}
}

func TestNotModified(t *testing.T) {
	e := NewEntry(200, hdr("ETag", `"abc"`), []byte("x"), Decision{Store: true, TTL: time.Minute}, nil, t0, 0)
	for in, want := range map[string]bool{`"abc"`: true, `W/"abc"`: true, `"x", "abc"`: true, `*`: true, `"abd"`: false, `abc`: false} {
		if got := e.NotModified([]string{in}); got != want {
			t.Errorf("If-None-Match %s: %v", in, got)
		}
	}
	if e.NotModified(nil) {
		t.Error("no If-None-Match is not a 304")
	}
	nf := NewEntry(404, hdr("ETag", `"abc"`), nil, Decision{Store: true, TTL: time.Minute}, nil, t0, 0)
	if nf.NotModified([]string{`"abc"`}) {
		t.Error("a 404 answered 304")
	}
}

func TestEntryBinaryRoundTrip(t *testing.T) {
	up := hdr("Content-Type", "text/plain", "X-Multi", "1", "X-Multi", "2", "Vary", "Accept")
	e := NewEntry(203, up, []byte("hello\x00world"), Decision{Store: true, TTL: 90 * time.Second, Buckets: []string{"a", "b:c"}},
		hdr("Accept", "text/*"), t0.Add(123456789), 7*time.Minute)
	b, err := e.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back Entry
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !back.Stored.Equal(e.Stored) {
		t.Fatalf("stored %v, want %v", back.Stored, e.Stored)
	}
	back.Stored = e.Stored
	if !reflect.DeepEqual(&back, e) {
		t.Fatalf("round trip:\n%+v\nwant\n%+v", &back, e)
	}
	// Every truncation, and garbage, is an error, not a panic.
	for i := range len(b) {
		if err := new(Entry).UnmarshalBinary(b[:i]); err == nil {
			t.Fatalf("truncated at %d: no error", i)
		}
	}
	if err := new(Entry).UnmarshalBinary(append(bytes.Clone(b), 0)); err == nil {
		t.Fatal("trailing byte: no error")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		junk := bytes.Clone(b)
		for range 1 + rng.IntN(4) {
			junk[rng.IntN(len(junk))] = byte(rng.Uint32())
		}
		var x Entry
		_ = x.UnmarshalBinary(junk)
	}
	huge := append([]byte{entryVersion}, bytes.Repeat([]byte{0xff}, 9)...)
	if err := new(Entry).UnmarshalBinary(huge); err == nil {
		t.Fatal("absurd status accepted")
	}
}

func TestEntryHoldsNoCredential(t *testing.T) {
	const secret = "Bearer s3cr3t-t0k3n"
	r := req("GET", "http://api.example/me", "Authorization", secret)
	k := KeyOf(r, "z", nil)
	e := NewEntry(200, hdr("Vary", "Accept"), []byte("me"), Decision{Store: true, TTL: time.Minute}, r.Header, t0, 0)
	b, _ := e.MarshalBinary()
	if strings.Contains(string(b), "s3cr3t") || bytes.Contains(k.ID[:], []byte("s3cr3t")) {
		t.Fatal("credential stored")
	}
}

// TestEntrySharedSurvivesEncoding: whether the upstream said an entry may
// be shared is kept by stores outside the process; entries written by the
// earlier version (1) read as not shared.
func TestEntrySharedSurvivesEncoding(t *testing.T) {
	req := httptest.NewRequest("GET", "http://example/a", nil)
	for _, shared := range []bool{false, true} {
		e := NewEntry(200, http.Header{"Content-Type": {"text/plain"}}, []byte("hi"), Decision{Store: true, TTL: time.Minute, Shared: shared}, req.Header, t0, 0)
		b, err := e.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var back Entry
		if err := back.UnmarshalBinary(b); err != nil || back.Shared != shared {
			t.Fatalf("shared %v: back %v, %v", shared, back.Shared, err)
		}
		if shared {
			// The same entry as version 1 wrote it: no flags byte.
			v1 := append([]byte{1}, b[2:]...)
			if err := back.UnmarshalBinary(v1); err != nil || back.Shared {
				t.Fatalf("version 1: shared %v, %v", back.Shared, err)
			}
		}
	}
}
