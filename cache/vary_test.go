package cache

import (
	"testing"
	"time"
)

func TestAcceptedCodings(t *testing.T) {
	for in, want := range map[string]string{
		"gzip, deflate, br, zstd":         "br,deflate,gzip,zstd", // Chrome
		"ZSTD;q=0.5,br , gzip,deflate":    "br,deflate,gzip,zstd",
		"deflate, gzip":                   "deflate,gzip", // curl --compressed, older builds
		"gzip":                            "gzip",
		"GZIP":                            "gzip",
		"gzip;q=1.0":                      "gzip",
		"gzip ; q=0.001":                  "gzip",
		"x-gzip":                          "gzip",
		"gzip,,gzip, made-up, x-br":       "gzip",
		"gzip;q=0":                        "identity",
		"gzip;q=0.000001":                 "identity",
		"gzip;q=abc":                      "gzip", // an invalid weight is 1, as in Caddy's encode
		"gzip;q=2":                        "gzip",
		"identity":                        "identity",
		"":                                "identity",
		"made-up":                         "identity",
		"*":                               "br,compress,deflate,gzip,zstd",
		"*, gzip;q=0":                     "br,compress,deflate,zstd",
		"gzip;q=0, *":                     "br,compress,deflate,zstd",
		"*;q=0, br":                       "br",
		"br, gzip;q=0, gzip":              "br,gzip", // the last word on a coding wins
		"compress, x-compress;q=0, zstd":  "zstd",
		"gzip, deflate, br, zstd, zstd":   "br,deflate,gzip,zstd",
		" br\t,\tgzip ":                   "br,gzip",
		"br;foo=bar":                      "br",
		"br;q=0;foo=bar":                  "identity",
		"br;foo=bar;q=0":                  "br", // only the first parameter is a weight
		"gzip;q=0.5, deflate;q=0.5, br;q": "br,deflate,gzip",
	} {
		if got := AcceptedCodings([]string{in}); got != want {
			t.Errorf("AcceptedCodings(%q) = %q, want %q", in, got, want)
		}
	}
	if got := AcceptedCodings([]string{"gzip", "br"}); got != "br,gzip" {
		t.Errorf("two field lines: %q", got)
	}
}

func TestVariantKey(t *testing.T) {
	r := req("GET", "http://api.example/v")
	k := KeyOf(r, "z", nil)
	vary := []string{"Accept-Encoding", "Accept-Language"}
	base := VariantKey(k, vary, hdr("Accept-Encoding", "gzip, br", "Accept-Language", "fr"))
	if base.ID == k.ID || base.Shard != k.Shard || base.HasAuth != k.HasAuth {
		t.Fatal("a variant key is the URL's")
	}
	if same := VariantKey(k, vary, hdr("Accept-Encoding", "BR,x-gzip;q=0.3", "Accept-Language", "fr")); same != base {
		t.Error("two spellings of one Accept-Encoding select two variants")
	}
	seen := map[Hash]string{base.ID: "base", k.ID: "url"}
	for name, v := range map[string]Key{
		"gzip":     VariantKey(k, vary, hdr("Accept-Encoding", "gzip", "Accept-Language", "fr")),
		"no ae":    VariantKey(k, vary, hdr("Accept-Language", "fr")),
		"identity": VariantKey(k, vary, hdr("Accept-Encoding", "identity", "Accept-Language", "fr")),
		"de":       VariantKey(k, vary, hdr("Accept-Encoding", "gzip, br", "Accept-Language", "de")),
		"one name": VariantKey(k, vary[:1], hdr("Accept-Encoding", "gzip, br", "Accept-Language", "fr")),
		"other":    VariantKey(KeyOf(req("GET", "http://api.example/w"), "z", nil), vary, hdr("Accept-Encoding", "gzip, br", "Accept-Language", "fr")),
	} {
		if other, dup := seen[v.ID]; dup {
			t.Errorf("%s has the key of %s", name, other)
		}
		seen[v.ID] = name
	}
}

// TestIndexEntry: an index lists the Vary headers, lives as long as the
// longest of its variants, and reads back as an index; an instance of the
// earlier release takes it for a corrupt entry (version 3), and reads
// every other entry (version 2).
func TestIndexEntry(t *testing.T) {
	r := req("GET", "http://api.example/v", "Accept-Encoding", "gzip")
	long := NewEntry(200, hdr("Vary", "Accept-Encoding"), []byte("a"), Decision{Store: true, TTL: time.Hour}, r.Header, t0, 0)
	idx := NewIndex(long, nil)
	if !idx.Index || idx.Expires() != long.Expires() || len(idx.Body) != 0 || idx.Vary[0] != "Accept-Encoding" {
		t.Fatalf("index %+v", idx)
	}
	short := NewEntry(200, hdr("Vary", "Accept-Encoding"), []byte("b"), Decision{Store: true, TTL: time.Minute}, r.Header, t0.Add(time.Minute), 0)
	if next := NewIndex(short, idx); next.Expires() != long.Expires() {
		t.Fatalf("the index outlives a variant by %v", long.Expires().Sub(next.Expires()))
	}
	if next := NewIndex(long, NewIndex(short, nil)); next.Expires() != long.Expires() {
		t.Fatal("a longer variant does not lengthen the index")
	}
	b, _ := idx.MarshalBinary()
	var back Entry
	if err := back.UnmarshalBinary(b); err != nil || !back.Index || back.Vary[0] != "Accept-Encoding" {
		t.Fatalf("index read back: %+v %v", &back, err)
	}
	if b[0] != 3 {
		t.Fatalf("index written as version %d", b[0])
	}
	plain, _ := long.MarshalBinary()
	if plain[0] != 2 {
		t.Fatalf("an entry written as version %d", plain[0])
	}
	// An index without Vary is corrupt.
	empty := &Entry{Index: true, Stored: t0, TTL: time.Minute}
	empty.finish()
	eb, _ := empty.MarshalBinary()
	if err := new(Entry).UnmarshalBinary(eb); err == nil {
		t.Fatal("an index without Vary reads back")
	}
}
