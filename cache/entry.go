package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Entry is a stored response. An entry is immutable once built: stores and
// concurrent readers share it.
type Entry struct {
	// Status is the response status.
	Status int
	// Header is served with the entry: the upstream's headers without
	// hop-by-hop and control headers, Date, Age, Content-Length and
	// rate-limit headers (those describe one request, not the resource),
	// with ETag.
	Header http.Header
	// Body is the whole body.
	Body []byte
	// ETag is the entity tag served: the upstream's, or a fingerprint of
	// the body when the upstream sent none.
	ETag string
	// Stored is when the response was stored.
	Stored time.Time
	// TTL is how long after Stored the entry is fresh.
	TTL time.Duration
	// Stale is how long past its TTL the entry is kept to answer when the
	// upstream is offline (stale_if_error).
	Stale time.Duration
	// SWR is how long past its TTL the entry is served while it is
	// refreshed in the background (stale-while-revalidate).
	SWR time.Duration
	// Buckets tag the entry for purging.
	Buckets []string
	// Shared tells that the upstream said the response may be shared
	// between users (Decision.Shared).
	Shared bool
	// Vary lists the request headers the response varies on, and
	// VaryValues the selecting values (comma-joined, Accept-Encoding as
	// the codings it accepts) the request that produced it had: the entry
	// serves only requests with the same values.
	Vary, VaryValues []string
	// Index tells that the entry holds no response but the Vary list of
	// its URL's responses, each stored under its VariantKey (NewIndex).
	Index bool

	contentLength string
	values        int
	size          int64
	hit           atomic.Pointer[HitMemo]
}

// HitMemo holds header values a server derives from an entry for one
// second of its age (Age, a Cache-Status member), so that the hits served
// within that second share them instead of formatting them again.
type HitMemo struct {
	// Age is the entry's age, in seconds, the values are for.
	Age int64
	// Tag is whatever else the values depend on (the cache's name).
	Tag string
	// AgeValue and Status are the values.
	AgeValue, Status string
}

// HitMemo returns the memo a server last stored on the entry, or nil.
func (e *Entry) HitMemo() *HitMemo { return e.hit.Load() }

// SetHitMemo stores m on the entry for the hits that follow.
func (e *Entry) SetHitMemo(m *HitMemo) { e.hit.Store(m) }

// entryOverhead approximates what an entry costs beyond its bytes: the
// structures of the entry, its map and its place in a store.
const entryOverhead = 512

// NewEntry builds the entry of a response to req, stored at now, under a
// Decision to store it. The body is copied; header is not retained.
func NewEntry(status int, header http.Header, body []byte, d Decision, req http.Header, now time.Time, stale time.Duration) *Entry {
	e := &Entry{
		Status:  status,
		Header:  make(http.Header, len(header)+1),
		Body:    append([]byte(nil), body...),
		Stored:  now,
		TTL:     d.TTL,
		Stale:   max(stale, 0),
		SWR:     max(d.SWR, 0),
		Buckets: d.Buckets,
		Shared:  d.Shared,
	}
	var drop []string
	for _, v := range header["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				drop = append(drop, http.CanonicalHeaderKey(name))
			}
		}
	}
	for name, vals := range header {
		if !keptHeader(name) || contains(drop, name) || len(vals) == 0 {
			continue
		}
		e.Header[name] = append(make([]string, 0, len(vals)), vals...)
	}
	if et := e.Header["Etag"]; len(et) > 0 && et[0] != "" {
		e.ETag = et[0]
	} else {
		sum := sha256.Sum256(e.Body)
		e.ETag = `"` + hex.EncodeToString(sum[:12]) + `"`
		e.Header["Etag"] = []string{e.ETag}
	}
	e.Vary, _ = VaryNames(header)
	if len(e.Vary) > 0 {
		e.VaryValues = make([]string, len(e.Vary))
		for i, name := range e.Vary {
			e.VaryValues[i] = selectingValue(name, req[name])
		}
	}
	e.finish()
	return e
}

// keptHeader tells whether a response header belongs in an entry.
func keptHeader(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"Date", "Age", "Content-Length", "Set-Cookie",
		"Ratelimit", "Ratelimit-Policy", "Retry-After":
		return false
	}
	return !IsControlHeader(name) && !strings.HasPrefix(name, "X-Ratelimit-")
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// finish computes what serving the entry needs, once.
func (e *Entry) finish() {
	e.contentLength = strconv.Itoa(len(e.Body))
	e.values = 0
	e.size = entryOverhead + int64(len(e.Body)+len(e.ETag))
	for name, vals := range e.Header {
		e.values += len(vals)
		e.size += int64(len(name)) + 16
		for _, v := range vals {
			e.size += int64(len(v)) + 16
		}
	}
	for _, s := range e.Buckets {
		e.size += int64(len(s)) + 16 + sha256.Size
	}
	for i := range e.Vary {
		e.size += int64(len(e.Vary[i])+len(e.VaryValues[i])) + 32
	}
}

// ContentLength is the body's length, formatted.
func (e *Entry) ContentLength() string { return e.contentLength }

// HeaderValues is the number of header values, to size a copy.
func (e *Entry) HeaderValues() int { return e.values }

// Size is what the entry costs a memory store, in bytes.
func (e *Entry) Size() int64 { return e.size }

// Expires is when the entry is no longer useful: TTL past Stored, and the
// longer of Stale and SWR.
func (e *Entry) Expires() time.Time { return e.Stored.Add(e.TTL + max(e.Stale, e.SWR)) }

// Fresh tells whether the entry may be served as a HIT at now.
func (e *Entry) Fresh(now time.Time) bool { return now.Before(e.Stored.Add(e.TTL)) }

// Revalidating tells whether the entry, stale at now, may be served while
// it is refreshed in the background: within SWR past its TTL.
func (e *Entry) Revalidating(now time.Time) bool {
	return e.SWR > 0 && !e.Fresh(now) && now.Before(e.Stored.Add(e.TTL+e.SWR))
}

// Usable tells whether the entry may still be served at now when the
// upstream is offline.
func (e *Entry) Usable(now time.Time) bool { return now.Before(e.Stored.Add(e.TTL + e.Stale)) }

// Age is the entry's age in whole seconds at now, for the Age header.
func (e *Entry) Age(now time.Time) int64 {
	return max(int64(now.Sub(e.Stored)/time.Second), 0)
}

// Matches tells whether the entry serves a request with these headers: the
// headers it varies on have the values they had when it was stored.
func (e *Entry) Matches(req http.Header) bool {
	for i, name := range e.Vary {
		if name == "Accept-Encoding" && len(req[name]) > 0 {
			if AcceptedCodings(req[name]) != e.VaryValues[i] {
				return false
			}
		} else if !joinedEqual(req[name], e.VaryValues[i]) {
			return false
		}
	}
	return true
}

// joinedEqual tells whether vals joined with commas equal s, without
// joining them.
func joinedEqual(vals []string, s string) bool {
	for i, v := range vals {
		if i > 0 {
			if len(s) == 0 || s[0] != ',' {
				return false
			}
			s = s[1:]
		}
		if !strings.HasPrefix(s, v) {
			return false
		}
		s = s[len(v):]
	}
	return s == ""
}

// NotModified tells whether a conditional request with these If-None-Match
// values is answered 304 by this entry: a 200 whose ETag matches one of
// them, compared weakly as RFC 9110 asks for If-None-Match, or "*".
func (e *Entry) NotModified(ifNoneMatch []string) bool {
	if e.Status != http.StatusOK || len(ifNoneMatch) == 0 {
		return false
	}
	own := strings.TrimPrefix(e.ETag, "W/")
	for _, line := range ifNoneMatch {
		for tag := range strings.SplitSeq(line, ",") {
			tag = strings.TrimSpace(tag)
			if tag == "*" || strings.TrimPrefix(tag, "W/") == own {
				return true
			}
		}
	}
	return false
}

// The binary form of an entry, for stores outside the process: a version
// byte, then (from version 2) a byte of flags, then the fields, strings and
// byte slices length-prefixed. Version 1 entries, which other instances of
// an earlier release may still write, read as not shared. Version 3 adds
// the stale-while-revalidate window after Stale; it is written only for
// what version 2 cannot say (an index, a window), so that instances of the
// earlier release sharing a Redis read every other entry, and take the
// rest for corrupt entries, misses, rather than for empty responses or
// entries kept too long.
const (
	entryVersion   = 3
	entryVersionV2 = 2
)

// The flags of an entry.
const (
	entryShared = 1 << iota
	entryIndex
)

// errCorrupt is returned when a stored entry cannot be read back.
var errCorrupt = errors.New("cache: corrupt entry")

// MarshalBinary encodes the entry.
func (e *Entry) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 64+len(e.Body)+int(e.size-entryOverhead))
	version, flags := byte(entryVersionV2), byte(0)
	if e.Shared {
		flags |= entryShared
	}
	if e.Index {
		flags |= entryIndex
	}
	if e.Index || e.SWR > 0 {
		version = entryVersion
	}
	b = append(b, version, flags)
	b = binary.AppendUvarint(b, uint64(e.Status))
	b = binary.AppendVarint(b, e.Stored.UnixNano())
	b = binary.AppendVarint(b, int64(e.TTL))
	b = binary.AppendVarint(b, int64(e.Stale))
	if version == entryVersion {
		b = binary.AppendVarint(b, int64(e.SWR))
	}
	b = appendField(b, e.ETag)
	b = appendStrings(b, e.Buckets)
	b = appendStrings(b, e.Vary)
	b = appendStrings(b, e.VaryValues)
	b = binary.AppendUvarint(b, uint64(len(e.Header)))
	for name, vals := range e.Header {
		b = appendField(b, name)
		b = appendStrings(b, vals)
	}
	b = binary.AppendUvarint(b, uint64(len(e.Body)))
	b = append(b, e.Body...)
	return b, nil
}

func appendStrings(b []byte, list []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(list)))
	for _, s := range list {
		b = appendField(b, s)
	}
	return b
}

// UnmarshalBinary decodes an entry written by MarshalBinary. Any
// inconsistency is an error, never a panic: the bytes come from a shared
// server.
func (e *Entry) UnmarshalBinary(data []byte) error {
	d := decoder{b: data}
	flags := byte(0)
	version := d.byte()
	switch version {
	case 1:
	case entryVersionV2, entryVersion:
		flags = d.byte()
	default:
		return errCorrupt
	}
	status := d.uvarint()
	stored := d.varint()
	ttl := d.varint()
	stale := d.varint()
	var swr int64
	if version == entryVersion {
		swr = d.varint()
	}
	etag := d.string()
	buckets := d.strings()
	vary := d.strings()
	varyValues := d.strings()
	n := d.count()
	header := make(http.Header, n)
	for range n {
		name := d.string()
		header[name] = d.strings()
	}
	body := d.bytes()
	index := flags&entryIndex != 0
	if d.err || len(d.b) != 0 || (status < 100 || status > 999) && !(index && status == 0) ||
		ttl < 0 || stale < 0 || swr < 0 || len(vary) != len(varyValues) || index && len(vary) == 0 {
		return errCorrupt
	}
	*e = Entry{
		Status:     int(status),
		Header:     header,
		Body:       body,
		ETag:       etag,
		Stored:     time.Unix(0, stored),
		TTL:        time.Duration(ttl),
		Stale:      time.Duration(stale),
		SWR:        time.Duration(swr),
		Buckets:    buckets,
		Vary:       vary,
		VaryValues: varyValues,
		Shared:     flags&entryShared != 0,
		Index:      index,
	}
	e.finish()
	return nil
}

// decoder reads the binary form; after an error every read returns zero
// values and err stays set.
type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) byte() byte {
	if d.err || len(d.b) == 0 {
		d.err = true
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = true
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = true
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a number of items, each at least one byte long, so that a
// corrupt count cannot make the decoder allocate more than the input.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = true
		return 0
	}
	return int(n)
}

func (d *decoder) bytes() []byte {
	n := d.count()
	if d.err {
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) string() string { return string(d.bytes()) }

func (d *decoder) strings() []string {
	n := d.count()
	if d.err || n == 0 {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = d.string()
	}
	return out
}
