//go:build race

package cache

// raceEnabled: the race detector makes sync.Pool drop a quarter of what
// it is given, so a pooled buffer is sometimes allocated afresh.
const raceEnabled = true
