// Command run prints limitertrace.Trace, compiled.
package main

import (
	"flag"
	"os"

	"github.com/edgelimit/caddy-edgelimit/traefik/harness/limitertrace"
)

func main() {
	seed := flag.Int64("seed", 1, "random seed")
	steps := flag.Int("steps", 2000, "decisions to make")
	start := flag.Int64("start", 1800000000000000, "first time, microseconds since the epoch")
	flag.Parse()
	limitertrace.Trace(os.Stdout, *seed, *steps, *start)
}
