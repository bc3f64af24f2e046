package cache

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisPrefix starts the names of the Redis store's keys.
const DefaultRedisPrefix = "edge_cache:"

// RedisOptions configures a Redis store.
type RedisOptions struct {
	// Prefix starts every key name (default DefaultRedisPrefix), so that
	// caches can share a database with each other and with the limiter.
	Prefix string
}

// Redis is a Store in a Redis server (single node, Sentinel or Cluster),
// shared by every Caddy instance that uses it.
//
// An entry is one string, <prefix>c:<id>, holding the binary Entry, with a
// Redis TTL of the entry's TTL plus its stale time. Purge indexes are
// sorted sets, <prefix>b:<shard>:<bucket hash> and
// <prefix>a:<shard>:<authorization hash>, whose members are entry keys
// scored by their expiry (unix milliseconds): each write drops the members
// that have expired, so an index never outgrows its live entries, and each
// index lives as long as its longest-lived member (EXPIRE NX then GT; Redis
// 7 or later).
//
// On one node a purge is one script that reads the indexes and deletes
// their entries. On a Cluster the keys of one purge live in many slots,
// where a script may not reach, so a purge is two pipelined round trips
// instead: read the indexes, then delete.
type Redis struct {
	c        redis.UniversalClient
	prefix   string
	scripted bool
}

// NewRedis returns a store on client; the caller keeps ownership of the
// client (Close does not close it).
func NewRedis(client redis.UniversalClient, o RedisOptions) *Redis {
	if o.Prefix == "" {
		o.Prefix = DefaultRedisPrefix
	}
	_, single := client.(*redis.Client)
	return &Redis{c: client, prefix: o.Prefix, scripted: single}
}

func (r *Redis) entryKey(id Hash) string { return r.prefix + "c:" + id.String() }

func (r *Redis) indexName(kind byte, shard uint8, h Hash) string {
	return r.prefix + string(kind) + ":" + strconv.Itoa(int(shard)) + ":" + h.String()
}

// Get implements Store. An entry that cannot be read back (written by an
// incompatible version, or damaged) is a miss: the next Set replaces it.
func (r *Redis) Get(ctx context.Context, key Key, _ time.Time) (*Entry, error) {
	b, err := r.c.Get(ctx, r.entryKey(key.ID)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	e := new(Entry)
	if e.UnmarshalBinary(b) != nil {
		return nil, nil
	}
	return e, nil
}

// Set implements Store: the entry and its index memberships in one
// pipelined round trip.
func (r *Redis) Set(ctx context.Context, key Key, e *Entry, now time.Time) error {
	keep := e.Expires().Sub(now)
	if keep < time.Millisecond {
		return nil
	}
	val, err := e.MarshalBinary()
	if err != nil {
		return err
	}
	name := r.entryKey(key.ID)
	score := float64(e.Expires().UnixMilli())
	past := "(" + strconv.FormatInt(now.UnixMilli(), 10)
	// Index TTLs are whole seconds, rounded up past the entry's.
	indexTTL := keep.Truncate(time.Second) + time.Second
	pipe := r.c.Pipeline()
	pipe.Set(ctx, name, val, keep)
	index := func(set string) {
		pipe.ZAdd(ctx, set, redis.Z{Score: score, Member: name})
		pipe.ZRemRangeByScore(ctx, set, "-inf", past)
		pipe.ExpireNX(ctx, set, indexTTL)
		pipe.ExpireGT(ctx, set, indexTTL)
	}
	for _, b := range e.Buckets {
		index(r.indexName('b', key.Shard, bucketHash(b)))
	}
	if key.HasAuth {
		index(r.indexName('a', key.Shard, key.Auth))
	}
	_, err = pipe.Exec(ctx)
	return err
}

// purgeScript deletes the entries listed in the indexes KEYS, then the
// indexes, and returns how many entries it deleted. UNLINK frees large
// values in the background; batches keep unpack within Lua's stack.
var purgeScript = redis.NewScript(`
local n = 0
for _, set in ipairs(KEYS) do
	local members = redis.call('ZRANGE', set, 0, -1)
	for i = 1, #members, 1000 do
		n = n + redis.call('UNLINK', unpack(members, i, math.min(i + 999, #members)))
	end
	redis.call('UNLINK', set)
end
return n
`)

// Purge implements Store.
func (r *Redis) Purge(ctx context.Context, p Purge) (int, error) {
	var sets []string
	for _, shard := range p.shards() {
		for _, b := range p.Buckets {
			sets = append(sets, r.indexName('b', shard, bucketHash(b)))
		}
		for _, a := range p.Auths {
			sets = append(sets, r.indexName('a', shard, a))
		}
	}
	if len(sets) == 0 {
		return 0, nil
	}
	if r.scripted {
		n, err := purgeScript.Run(ctx, r.c, sets).Int()
		return n, err
	}
	return r.purgePipelined(ctx, sets)
}

// purgePipelined is Purge where a script cannot reach every key: one round
// trip reads the indexes, one deletes (a Cluster client splits each
// pipeline by node).
func (r *Redis) purgePipelined(ctx context.Context, sets []string) (int, error) {
	pipe := r.c.Pipeline()
	reads := make([]*redis.StringSliceCmd, len(sets))
	for i, set := range sets {
		reads[i] = pipe.ZRange(ctx, set, 0, -1)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	seen := make(map[string]bool)
	pipe = r.c.Pipeline()
	var dels []*redis.IntCmd
	for _, cmd := range reads {
		for _, member := range cmd.Val() {
			if !seen[member] {
				seen[member] = true
				dels = append(dels, pipe.Unlink(ctx, member))
			}
		}
	}
	for _, set := range sets {
		pipe.Unlink(ctx, set)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	n := 0
	for _, d := range dels {
		n += int(d.Val())
	}
	return n, nil
}

// Close implements Store; the client belongs to the caller.
func (r *Redis) Close() error { return nil }

// Interface guard.
var _ Store = (*Redis)(nil)
