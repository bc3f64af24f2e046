//go:build race

package store_test

// raceEnabled scales the load of some tests down under the race detector,
// which runs them ten times slower.
const raceEnabled = true
