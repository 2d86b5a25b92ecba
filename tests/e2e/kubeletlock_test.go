package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// kubeletLockPath serialises every suite that uses /var/lib/kubelet (these
// device-manager tests and tests/cluster's real kubelet); shell users take
// it with `flock /tmp/gpublocks-kubelet.lock <command>`.
const kubeletLockPath = "/tmp/gpublocks-kubelet.lock"

// lockKubelet holds kubeletLockPath until the test ends, waiting while
// another suite has it. When an ancestor process holds it already (the
// suite runs under flock(1)), waiting would deadlock: it goes ahead.
func lockKubelet(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(kubeletLockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("opening %s: %v", kubeletLockPath, err)
	}
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		if lockedByAncestor(f) {
			_ = f.Close()
			return
		}
		t.Logf("waiting for %s: another suite uses /var/lib/kubelet", kubeletLockPath)
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
	}
	if err != nil {
		_ = f.Close()
		t.Fatalf("locking %s: %v", kubeletLockPath, err)
	}
	t.Cleanup(func() { _ = f.Close() }) // closing releases the lock
}

// lockedByAncestor reports whether /proc/locks names one of this process's
// ancestors as holding a flock on f's inode.
func lockedByAncestor(f *os.File) bool {
	var st syscall.Stat_t
	if syscall.Fstat(int(f.Fd()), &st) != nil {
		return false
	}
	ancestors := map[string]bool{}
	for pid := os.Getppid(); pid > 1 && !ancestors[strconv.Itoa(pid)]; {
		ancestors[strconv.Itoa(pid)] = true
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		i := strings.LastIndexByte(string(stat), ')')
		if err != nil || i < 0 {
			break
		}
		fields := strings.Fields(string(stat)[i+1:]) // state ppid ...
		if len(fields) < 2 {
			break
		}
		pid, _ = strconv.Atoi(fields[1])
	}
	locks, err := os.Open("/proc/locks")
	if err != nil {
		return false
	}
	defer locks.Close()
	sc := bufio.NewScanner(locks)
	for sc.Scan() {
		// 1: FLOCK  ADVISORY  WRITE 21794 fe:00:9985863 0 EOF
		fields := strings.Fields(sc.Text())
		if len(fields) >= 6 && fields[1] == "FLOCK" && strings.HasSuffix(fields[5], ":"+strconv.FormatUint(st.Ino, 10)) && ancestors[fields[4]] {
			return true
		}
	}
	return false
}
