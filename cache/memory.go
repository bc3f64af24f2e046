package cache

import (
	"context"
	"sync"
	"time"
)

// DefaultMaxMemory bounds a memory store unless configured: 256 MB.
const DefaultMaxMemory = 256_000_000

// MemoryOptions configures a Memory store. The zero value is usable.
type MemoryOptions struct {
	// MaxMemory bounds the total Size of the entries kept, in bytes
	// (default DefaultMaxMemory). Past it, the least recently used
	// entries are evicted.
	MaxMemory int64
	// MaxEntry is the Size of the largest entry the store should accept
	// (default: a body of DefaultMaxSize). The store splits its memory in
	// up to 16 parts, each with its own lock and LRU list, as long as each
	// part can hold several entries that large.
	MaxEntry int64
}

// Memory is an in-process Store: entries in hash maps, least recently used
// evicted first, within a bound on memory. Entries past their Expires are
// dropped when met.
type Memory struct {
	parts   []memPart
	mask    uint8
	perPart int64
	idxMu   sync.Mutex
	index   map[indexKey]map[Hash]struct{}
}

// memPart is one lock's worth of the store, with its own LRU list.
type memPart struct {
	mu    sync.Mutex
	m     map[Hash]*memNode
	head  *memNode // most recently used
	tail  *memNode // least recently used
	used  int64
	evict uint64
	_     [24]byte // keep neighbouring locks on separate cache lines
}

type memNode struct {
	id         Hash
	e          *Entry
	size       int64
	shard      uint8
	auth       Hash
	hasAuth    bool
	buckets    []Hash
	prev, next *memNode
}

// indexKey names a purge index: entries of one bucket, or of one
// authorization, in one namespace.
type indexKey struct {
	kind  uint8 // 'b' or 'a'
	shard uint8
	hash  Hash
}

// NewMemory returns an empty memory store.
func NewMemory(o MemoryOptions) *Memory {
	if o.MaxMemory <= 0 {
		o.MaxMemory = DefaultMaxMemory
	}
	if o.MaxEntry <= 0 {
		o.MaxEntry = DefaultMaxSize + entryOverhead
	}
	n := 16
	for n > 1 && o.MaxMemory/int64(n) < 4*o.MaxEntry {
		n /= 2
	}
	m := &Memory{
		parts:   make([]memPart, n),
		mask:    uint8(n - 1),
		perPart: o.MaxMemory / int64(n),
		index:   make(map[indexKey]map[Hash]struct{}),
	}
	for i := range m.parts {
		m.parts[i].m = make(map[Hash]*memNode)
	}
	return m
}

func (m *Memory) part(id Hash) *memPart { return &m.parts[id[0]&m.mask] }

// Get implements Store.
func (m *Memory) Get(_ context.Context, key Key, now time.Time) (*Entry, error) {
	p := m.part(key.ID)
	p.mu.Lock()
	n := p.m[key.ID]
	if n == nil {
		p.mu.Unlock()
		return nil, nil
	}
	if !now.Before(n.e.Expires()) {
		m.remove(p, n)
		p.mu.Unlock()
		return nil, nil
	}
	p.toFront(n)
	e := n.e
	p.mu.Unlock()
	return e, nil
}

// Set implements Store.
func (m *Memory) Set(_ context.Context, key Key, e *Entry, now time.Time) error {
	size := e.Size()
	if size > m.perPart {
		return ErrTooLarge
	}
	if !now.Before(e.Expires()) {
		return nil
	}
	n := &memNode{id: key.ID, e: e, size: size, shard: key.Shard, auth: key.Auth, hasAuth: key.HasAuth}
	if len(e.Buckets) > 0 {
		n.buckets = make([]Hash, len(e.Buckets))
		for i, b := range e.Buckets {
			n.buckets[i] = bucketHash(b)
		}
	}
	p := m.part(key.ID)
	p.mu.Lock()
	if old := p.m[key.ID]; old != nil {
		m.remove(p, old)
	}
	p.m[key.ID] = n
	p.pushFront(n)
	p.used += size
	m.indexAdd(n)
	for p.used > m.perPart && p.tail != nil && p.tail != n {
		m.remove(p, p.tail)
		p.evict++
	}
	p.mu.Unlock()
	return nil
}

// Purge implements Store: the indexes give the entries, each removed under
// its part's lock.
func (m *Memory) Purge(_ context.Context, pg Purge) (int, error) {
	var ids []Hash
	m.idxMu.Lock()
	for _, shard := range pg.shards() {
		for _, b := range pg.Buckets {
			ids = m.indexTake(ids, indexKey{'b', shard, bucketHash(b)})
		}
		for _, a := range pg.Auths {
			ids = m.indexTake(ids, indexKey{'a', shard, a})
		}
	}
	m.idxMu.Unlock()
	removed := 0
	for _, id := range ids {
		p := m.part(id)
		p.mu.Lock()
		if n := p.m[id]; n != nil {
			m.remove(p, n)
			removed++
		}
		p.mu.Unlock()
	}
	return removed, nil
}

// indexTake appends the entries under k to ids and drops the index.
func (m *Memory) indexTake(ids []Hash, k indexKey) []Hash {
	set := m.index[k]
	for id := range set {
		ids = append(ids, id)
	}
	delete(m.index, k)
	return ids
}

// indexAdd records n in its purge indexes; the part's lock is held.
func (m *Memory) indexAdd(n *memNode) {
	if len(n.buckets) == 0 && !n.hasAuth {
		return
	}
	m.idxMu.Lock()
	n.eachIndex(func(k indexKey) { m.indexPut(k, n.id) })
	m.idxMu.Unlock()
}

// eachIndex calls f with every purge index that lists n.
func (n *memNode) eachIndex(f func(indexKey)) {
	for _, b := range n.buckets {
		f(indexKey{'b', n.shard, b})
	}
	if n.hasAuth {
		f(indexKey{'a', n.shard, n.auth})
	}
}

func (m *Memory) indexPut(k indexKey, id Hash) {
	set := m.index[k]
	if set == nil {
		set = make(map[Hash]struct{})
		m.index[k] = set
	}
	set[id] = struct{}{}
}

// remove takes n out of its part and of the indexes; the part's lock is
// held.
func (m *Memory) remove(p *memPart, n *memNode) {
	delete(p.m, n.id)
	p.unlink(n)
	p.used -= n.size
	if len(n.buckets) == 0 && !n.hasAuth {
		return
	}
	m.idxMu.Lock()
	n.eachIndex(func(k indexKey) { m.indexDrop(k, n.id) })
	m.idxMu.Unlock()
}

func (m *Memory) indexDrop(k indexKey, id Hash) {
	set := m.index[k]
	delete(set, id)
	if len(set) == 0 {
		delete(m.index, k)
	}
}

func (p *memPart) pushFront(n *memNode) {
	n.prev, n.next = nil, p.head
	if p.head != nil {
		p.head.prev = n
	}
	p.head = n
	if p.tail == nil {
		p.tail = n
	}
}

func (p *memPart) unlink(n *memNode) {
	if n.prev != nil {
		n.prev.next = n.next
	} else {
		p.head = n.next
	}
	if n.next != nil {
		n.next.prev = n.prev
	} else {
		p.tail = n.prev
	}
	n.prev, n.next = nil, nil
}

func (p *memPart) toFront(n *memNode) {
	if p.head == n {
		return
	}
	p.unlink(n)
	p.pushFront(n)
}

// MemoryStats describe a memory store.
type MemoryStats struct {
	Entries   int
	Used      int64 // bytes, as Entry.Size counts them
	Evictions uint64
	Indexes   int // purge indexes (bucket or authorization, per namespace)
}

// Stats returns the store's current numbers.
func (m *Memory) Stats() MemoryStats {
	var s MemoryStats
	for i := range m.parts {
		p := &m.parts[i]
		p.mu.Lock()
		s.Entries += len(p.m)
		s.Used += p.used
		s.Evictions += p.evict
		p.mu.Unlock()
	}
	m.idxMu.Lock()
	s.Indexes = len(m.index)
	m.idxMu.Unlock()
	return s
}

// MaxMemory returns the store's bound, in bytes.
func (m *Memory) MaxMemory() int64 { return m.perPart * int64(len(m.parts)) }

// Close implements Store: the entries are released.
func (m *Memory) Close() error {
	for i := range m.parts {
		p := &m.parts[i]
		p.mu.Lock()
		clear(p.m)
		p.head, p.tail, p.used = nil, nil, 0
		p.mu.Unlock()
	}
	m.idxMu.Lock()
	clear(m.index)
	m.idxMu.Unlock()
	return nil
}

// Interface guard.
var _ Store = (*Memory)(nil)
