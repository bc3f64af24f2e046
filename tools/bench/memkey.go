package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/perf/benchfmt"
)

// bytesPerKey runs store's BenchmarkMemoryBytesPerKey (1,000,000 keys
// inserted into a memory store, per algorithm, heap measured with
// runtime.MemStats) and returns its bytes/key per algorithm, in order.
func bytesPerKey(ctx context.Context, root string) ([]algoBytes, string, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkMemoryBytesPerKey$",
		"-benchtime", "1x", "-count", "1", "./store")
	cmd.Dir = root
	cmd.Env = os.Environ()
	// go test runs the test binary as its child: stop both on Ctrl-C.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, string(out), fmt.Errorf("go test -bench BenchmarkMemoryBytesPerKey: %v\n%s", err, out)
	}
	res, err := parseBytesPerKey(string(out))
	if err == nil && len(res) == 0 {
		err = fmt.Errorf("no bytes/key in:\n%s", out)
	}
	return res, string(out), err
}

type algoBytes struct {
	Algorithm   string  `json:"algorithm"`
	BytesPerKey float64 `json:"bytes_per_key"`
}

// parseBytesPerKey reads the bytes/key of each sub-benchmark of
// BenchmarkMemoryBytesPerKey (its name's first part, the algorithm) from
// go test's output, in Go's benchmark format.
func parseBytesPerKey(out string) ([]algoBytes, error) {
	var res []algoBytes
	r := benchfmt.NewReader(strings.NewReader(out), "go test")
	for r.Scan() {
		b, ok := r.Result().(*benchfmt.Result)
		if !ok {
			continue // a syntax error or a unit line: not a result
		}
		base, parts := b.Name.Parts()
		v, found := b.Value("bytes/key")
		if string(base) != "MemoryBytesPerKey" || len(parts) == 0 || !found {
			continue
		}
		res = append(res, algoBytes{Algorithm: strings.TrimPrefix(string(parts[0]), "/"), BytesPerKey: v})
	}
	return res, r.Err()
}
