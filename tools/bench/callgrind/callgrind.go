// Package callgrind runs a process under valgrind's callgrind, which counts
// the instructions it executes whatever else the machine is doing, and
// reads the counts back: zero them after a warm-up, dump them after the
// measured work. The bench (Caddy and its Redis) and rediscost (Redis
// alone) share it.
package callgrind

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Args is the valgrind command line that runs a program under callgrind,
// its counts dumped into out (and out.N for each dump on request): put it
// before the program's own arguments.
func Args(out string) []string {
	return []string{"valgrind", "--tool=callgrind", "--callgrind-out-file=" + out}
}

// GoEnv is the environment a Go 1.26 program needs under valgrind 3.19:
// the runtime must not use RDTSCP, which that valgrind does not know, and
// the scheduler's preemption signals crash it.
var GoEnv = []string{"GODEBUG=cpu.rdtscp=off,asyncpreemptoff=1"}

// Available says whether valgrind and callgrind_control are installed.
func Available() error {
	for _, c := range []string{"valgrind", "callgrind_control"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s not found (Debian: apt-get install valgrind)", c)
		}
	}
	return nil
}

// Zero sets the counts of the process pid to zero.
func Zero(pid int) error { return control("--zero", pid) }

func control(arg string, pid int) error {
	if out, err := exec.Command("callgrind_control", arg, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		return fmt.Errorf("callgrind_control %s %d: %v\n%s", arg, pid, err, out)
	}
	return nil
}

// Dump has the process pid, started with Args(out), write its counts since
// the last Zero, and returns the instructions it executed. keep, unless
// empty, is a directory to copy the dump into (for callgrind_annotate).
func Dump(pid int, out, keep string) (int64, error) {
	before, _ := filepath.Glob(out + "*")
	if err := control("--dump", pid); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		files, _ := filepath.Glob(out + "*")
		for _, f := range files {
			if contains(before, f) {
				continue
			}
			if ir, ok := Totals(f); ok {
				if keep != "" {
					if b, err := os.ReadFile(f); err == nil {
						_ = os.WriteFile(filepath.Join(keep, filepath.Base(f)), b, 0o644)
					}
				}
				return ir, nil
			}
		}
		// The dump is written by the process, asynchronously: poll for
		// the file (callgrind_control returns once it asked).
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("no callgrind dump of process %d appeared in 30s", pid)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Totals reads the "totals:" (or "summary:") line of a callgrind dump: the
// instructions it counts. ok is false until the dump is complete.
func Totals(file string) (ir int64, ok bool) {
	f, err := os.Open(file)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, p := range []string{"totals:", "summary:"} {
			if rest, found := strings.CutPrefix(line, p); found {
				if fields := strings.Fields(rest); len(fields) > 0 {
					if v, err := strconv.ParseInt(fields[0], 10, 64); err == nil {
						return v, true
					}
				}
			}
		}
	}
	return 0, false
}
