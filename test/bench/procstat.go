package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// procStat is what the timed runs report of the daemon's own cost: on
// virtual machines where a page fault costs tens of microseconds, the
// faults a cold lookup takes are a measurable part of its latency.
type procStat struct {
	minflt   int64
	cpuTicks int64 // utime + stime
}

// readProcStat reads /proc/PID/stat; a process that is gone reads as zero.
func readProcStat(pid int) procStat {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}
	}
	// The command name is in parentheses and may hold spaces: fields
	// are counted after the last ')'. Field 3 (state) is f[0].
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return procStat{}
	}
	num := func(i int) int64 { n, _ := strconv.ParseInt(f[i], 10, 64); return n }
	return procStat{minflt: num(7), cpuTicks: num(11) + num(12)}
}

// startPerf starts `perf record -g` on pid and returns a function that
// stops it and waits until perf has written out.
func startPerf(out string, pid int) func() {
	cmd := exec.Command("perf", "record", "-q", "-g", "-o", out, "-p", strconv.Itoa(pid))
	if err := cmd.Start(); err != nil {
		logf("perf: %v", err)
		return func() {}
	}
	time.Sleep(200 * time.Millisecond) // perf attaches asynchronously
	return func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
}
