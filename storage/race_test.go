//go:build race

package storage_test

// raceEnabled scales the load of some tests down under the race detector,
// which runs them ten times slower.
const raceEnabled = true
