package edgelimit

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/edgelimit/caddy-edgelimit/internal/args"
	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/store"
)

func init() {
	caddy.RegisterModule(MemoryStorage{})
}

// MemoryStorage keeps counters in this Caddy process: no set-up, the fastest
// option, exact for one instance. Counters survive `caddy reload`.
type MemoryStorage struct {
	// MaxKeys is the number of (limit, client) counters kept at most. When
	// a new counter would exceed it, expired counters are dropped first,
	// then those that carry the least (the fewest units counted; a client
	// being denied is forgotten last), counted as evictions. Default:
	// 1048576 (about 140 MB).
	MaxKeys int `json:"max_keys,omitempty"`
	// SweepInterval is how often expired counters are removed: each of the
	// store's shards by the first request that reaches it once the
	// interval has passed. Default: 10s.
	SweepInterval caddy.Duration `json:"sweep_interval,omitempty"`

	poolKey string
	mem     *store.Memory
}

// CaddyModule returns the Caddy module information.
func (MemoryStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "edge_limit.storage.memory",
		New: func() caddy.Module { return new(MemoryStorage) },
	}
}

// memoryPool holds memory stores across config reloads: a new config with
// the same memory settings finds the old store and its counters.
var memoryPool = caddy.NewUsagePool()

type pooledMemory struct{ *store.Memory }

func (p pooledMemory) Destruct() error { return p.Close() }

// Provision finds or creates the store.
func (m *MemoryStorage) Provision(caddy.Context) error {
	if m.MaxKeys < 0 {
		return fmt.Errorf("max_keys must not be negative, got %d", m.MaxKeys)
	}
	if m.SweepInterval < 0 {
		return fmt.Errorf("sweep_interval must not be negative, got %s", time.Duration(m.SweepInterval))
	}
	// The store expires and sweeps by the times of the decisions it is
	// given: a store is shared only by configurations on the same clock.
	clk := clock.ForProvision()
	m.poolKey = fmt.Sprintf("memory/%d/%d/%s", m.MaxKeys, m.SweepInterval, clock.ID(clk))
	v, _, err := memoryPool.LoadOrNew(m.poolKey, func() (caddy.Destructor, error) {
		return pooledMemory{store.NewMemory(store.MemoryOptions{
			MaxKeys:       m.MaxKeys,
			SweepInterval: time.Duration(m.SweepInterval),
		})}, nil
	})
	if err != nil {
		return err
	}
	m.mem = v.(pooledMemory).Memory
	return nil
}

// Store implements StorageBackend.
func (m *MemoryStorage) Store() store.Store { return m.mem }

// Cleanup releases this config's hold on the store.
func (m *MemoryStorage) Cleanup() error {
	if m.poolKey == "" {
		return nil
	}
	_, err := memoryPool.Delete(m.poolKey)
	return err
}

// UnmarshalCaddyfile reads
//
//	storage memory {
//		max_keys <n>
//		sweep_interval <duration>
//	}
func (m *MemoryStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // "memory"
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_keys":
			n, err := args.Int(d)
			if err != nil {
				return err
			}
			if n < 1 {
				return d.Errf("max_keys must be at least 1, got %d", n)
			}
			m.MaxKeys = int(n)
		case "sweep_interval":
			dur, err := args.Duration(d)
			if err != nil {
				return err
			}
			m.SweepInterval = caddy.Duration(dur)
		default:
			return d.Errf("unknown memory storage option %q", d.Val())
		}
	}
	return nil
}
