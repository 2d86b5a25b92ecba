package metrics

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// goFamilies are the Go runtime metrics client_golang's Go collector
// exported by default, with its names and help texts.
func goFamilies() []family {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gc := debug.GCStats{PauseQuantiles: make([]time.Duration, 5)}
	debug.ReadGCStats(&gc)
	threads, _ := runtime.ThreadCreateProfile(nil)

	one := func(n, help, typ string, v float64) family {
		return family{name: n, help: help, typ: typ, series: []series{{value: v}}}
	}
	mem := func(n, help, typ string, v uint64) family {
		return one("go_memstats_"+n, help, typ, float64(v))
	}
	quantiles := []string{"0", "0.25", "0.5", "0.75", "1"}
	return []family{
		{name: "go_gc_duration_seconds", typ: "summary",
			help: "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.",
			write: func(w *textWriter) {
				for i, q := range quantiles {
					w.sample("go_gc_duration_seconds", []label{{"quantile", q}}, formatFloat(gc.PauseQuantiles[i].Seconds()))
				}
				w.sample("go_gc_duration_seconds_sum", nil, formatFloat(gc.PauseTotal.Seconds()))
				w.sample("go_gc_duration_seconds_count", nil, formatUint(uint64(gc.NumGC)))
			}},
		one("go_gc_gogc_percent", "Heap size target percentage configured by the user, otherwise 100. This value is set by the GOGC environment variable, and the runtime/debug.SetGCPercent function. Sourced from /gc/gogc:percent.",
			gauge, gogc()),
		one("go_gc_gomemlimit_bytes", "Go runtime memory limit configured by the user, otherwise math.MaxInt64. This value is set by the GOMEMLIMIT environment variable, and the runtime/debug.SetMemoryLimit function. Sourced from /gc/gomemlimit:bytes.",
			gauge, float64(debug.SetMemoryLimit(-1))),
		one("go_goroutines", "Number of goroutines that currently exist.", gauge, float64(runtime.NumGoroutine())),
		{name: "go_info", help: "Information about the Go environment.", typ: gauge,
			series: []series{{labels: []label{{"version", runtime.Version()}}, value: 1}}},
		mem("alloc_bytes", "Number of bytes allocated in heap and currently in use. Equals to /memory/classes/heap/objects:bytes.", gauge, ms.HeapAlloc),
		mem("alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already. Equals to /gc/heap/allocs:bytes.", counter, ms.TotalAlloc),
		mem("buck_hash_sys_bytes", "Number of bytes used by the profiling bucket hash table. Equals to /memory/classes/profiling/buckets:bytes.", gauge, ms.BuckHashSys),
		mem("frees_total", "Total number of heap objects frees. Equals to /gc/heap/frees:objects + /gc/heap/tiny/allocs:objects.", counter, ms.Frees),
		mem("gc_sys_bytes", "Number of bytes used for garbage collection system metadata. Equals to /memory/classes/metadata/other:bytes.", gauge, ms.GCSys),
		mem("heap_alloc_bytes", "Number of heap bytes allocated and currently in use, same as go_memstats_alloc_bytes. Equals to /memory/classes/heap/objects:bytes.", gauge, ms.HeapAlloc),
		mem("heap_idle_bytes", "Number of heap bytes waiting to be used. Equals to /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", gauge, ms.HeapIdle),
		mem("heap_inuse_bytes", "Number of heap bytes that are in use. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes", gauge, ms.HeapInuse),
		mem("heap_objects", "Number of currently allocated objects. Equals to /gc/heap/objects:objects.", gauge, ms.HeapObjects),
		mem("heap_released_bytes", "Number of heap bytes released to OS. Equals to /memory/classes/heap/released:bytes.", gauge, ms.HeapReleased),
		mem("heap_sys_bytes", "Number of heap bytes obtained from system. Equals to /memory/classes/heap/objects:bytes + /memory/classes/heap/unused:bytes + /memory/classes/heap/released:bytes + /memory/classes/heap/free:bytes.", gauge, ms.HeapSys),
		one("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.", gauge, float64(ms.LastGC)/1e9),
		mem("mallocs_total", "Total number of heap objects allocated, both live and gc-ed. Semantically a counter version for go_memstats_heap_objects gauge. Equals to /gc/heap/allocs:objects + /gc/heap/tiny/allocs:objects.", counter, ms.Mallocs),
		mem("mcache_inuse_bytes", "Number of bytes in use by mcache structures. Equals to /memory/classes/metadata/mcache/inuse:bytes.", gauge, ms.MCacheInuse),
		mem("mcache_sys_bytes", "Number of bytes used for mcache structures obtained from system. Equals to /memory/classes/metadata/mcache/inuse:bytes + /memory/classes/metadata/mcache/free:bytes.", gauge, ms.MCacheSys),
		mem("mspan_inuse_bytes", "Number of bytes in use by mspan structures. Equals to /memory/classes/metadata/mspan/inuse:bytes.", gauge, ms.MSpanInuse),
		mem("mspan_sys_bytes", "Number of bytes used for mspan structures obtained from system. Equals to /memory/classes/metadata/mspan/inuse:bytes + /memory/classes/metadata/mspan/free:bytes.", gauge, ms.MSpanSys),
		mem("next_gc_bytes", "Number of heap bytes when next garbage collection will take place. Equals to /gc/heap/goal:bytes.", gauge, ms.NextGC),
		mem("other_sys_bytes", "Number of bytes used for other system allocations. Equals to /memory/classes/other:bytes.", gauge, ms.OtherSys),
		mem("stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments. Equals to /memory/classes/heap/stacks:bytes.", gauge, ms.StackInuse),
		mem("stack_sys_bytes", "Number of bytes obtained from system for stack allocator. Equals to /memory/classes/heap/stacks:bytes + /memory/classes/os-stacks:bytes.", gauge, ms.StackSys),
		mem("sys_bytes", "Number of bytes obtained from system. Equals to /memory/classes/total:byte.", gauge, ms.Sys),
		one("go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting, or the number of operating system threads that can execute user-level Go code simultaneously. Sourced from /sched/gomaxprocs:threads.",
			gauge, float64(runtime.GOMAXPROCS(0))),
		one("go_threads", "Number of OS threads created.", gauge, float64(threads)),
	}
}

// gogc is the GC percent the runtime took from GOGC at start ("off": -1;
// unset or unparsable: 100). gpublocks never calls debug.SetGCPercent, and
// the runtime has no way to read the setting that does not change it
// short of runtime/metrics, whose package initialisation every start
// would pay.
func gogc() float64 {
	v := os.Getenv("GOGC")
	if v == "off" {
		return -1
	}
	if n, err := strconv.Atoi(v); err == nil {
		return float64(n)
	}
	return 100
}

// userHZ is the unit of the times in /proc/PID/stat (USER_HZ, 100 on every
// Linux platform Go supports).
const userHZ = 100

// processFamilies are the process metrics client_golang's process
// collector exported on Linux, read from /proc. A metric whose source
// cannot be read is left out.
func processFamilies() []family {
	var fams []family
	one := func(n, help, typ string, v float64) {
		fams = append(fams, family{name: n, help: help, typ: typ, series: []series{{value: v}}})
	}
	if st, err := readStat(); err == nil {
		one("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", counter, float64(st.utime+st.stime)/userHZ)
		one("process_virtual_memory_bytes", "Virtual memory size in bytes.", gauge, float64(st.vsize))
		one("process_resident_memory_bytes", "Resident memory size in bytes.", gauge, float64(st.rss*uint64(os.Getpagesize())))
		if boot, err := bootTime(); err == nil {
			one("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", gauge, boot+float64(st.starttime)/userHZ)
		}
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		one("process_open_fds", "Number of open file descriptors.", gauge, float64(len(fds)))
	}
	if files, space, err := readLimits(); err == nil {
		one("process_max_fds", "Maximum number of open file descriptors.", gauge, files)
		one("process_virtual_memory_max_bytes", "Maximum amount of virtual memory available in bytes.", gauge, space)
	}
	if in, out, err := readNetBytes(); err == nil {
		one("process_network_receive_bytes_total", "Number of bytes received by the process over the network.", counter, in)
		one("process_network_transmit_bytes_total", "Number of bytes sent by the process over the network.", counter, out)
	}
	return fams
}

type procStat struct {
	utime, stime, starttime, vsize, rss uint64
}

// readStat reads the fields of /proc/self/stat the metrics need.
func readStat() (procStat, error) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/self/stat: no command name")
	}
	f := strings.Fields(string(data[i+1:])) // f[0] is field 3 (state)
	if len(f) < 22 {
		return procStat{}, fmt.Errorf("/proc/self/stat: %d fields", len(f)+2)
	}
	var st procStat
	for _, p := range []struct {
		field int
		dst   *uint64
	}{{14, &st.utime}, {15, &st.stime}, {22, &st.starttime}, {23, &st.vsize}, {24, &st.rss}} {
		if *p.dst, err = strconv.ParseUint(f[p.field-3], 10, 64); err != nil {
			return procStat{}, fmt.Errorf("/proc/self/stat field %d: %w", p.field, err)
		}
	}
	return st, nil
}

// bootTime is the system's boot time in seconds since the epoch.
func bootTime() (float64, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("/proc/stat: no btime")
}

// readLimits returns the soft limits on open files and address space
// ("unlimited" reads as the largest uint64, as client_golang reported it).
func readLimits() (files, space float64, err error) {
	data, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		return 0, 0, err
	}
	soft := func(prefix string) (float64, error) {
		for line := range strings.Lines(string(data)) {
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				f := strings.Fields(rest)
				if len(f) == 0 {
					break
				}
				if f[0] == "unlimited" {
					return float64(math.MaxUint64), nil
				}
				return strconv.ParseFloat(f[0], 64)
			}
		}
		return 0, fmt.Errorf("/proc/self/limits: no %q", prefix)
	}
	if files, err = soft("Max open files"); err != nil {
		return 0, 0, err
	}
	space, err = soft("Max address space")
	return files, space, err
}

// readNetBytes reads the IP bytes in and out of the process's network
// namespace (/proc/self/net/netstat, IpExt InOctets and OutOctets).
func readNetBytes() (in, out float64, err error) {
	data, err := os.ReadFile("/proc/self/net/netstat")
	if err != nil {
		return 0, 0, err
	}
	var names []string
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, "IpExt:")
		if !ok {
			continue
		}
		if names == nil {
			names = strings.Fields(rest) // the header line comes first
			continue
		}
		values := strings.Fields(rest)
		get := func(n string) (float64, error) {
			for i, name := range names {
				if name == n && i < len(values) {
					return strconv.ParseFloat(values[i], 64)
				}
			}
			return 0, fmt.Errorf("/proc/self/net/netstat: no IpExt %s", n)
		}
		if in, err = get("InOctets"); err != nil {
			return 0, 0, err
		}
		out, err = get("OutOctets")
		return in, out, err
	}
	return 0, 0, fmt.Errorf("/proc/self/net/netstat: no IpExt values")
}
