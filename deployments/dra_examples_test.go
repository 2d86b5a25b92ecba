package deployments

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	dracel "k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
	"k8s.io/kubernetes/pkg/api/legacyscheme"

	"github.com/gpublocks/gpublocks/config"
	"github.com/gpublocks/gpublocks/dra"
	"github.com/gpublocks/gpublocks/gpu"
	"github.com/gpublocks/gpublocks/gpu/sim"
	"github.com/gpublocks/gpublocks/shape"
)

// The DRA examples are checked against what the plugin really publishes:
// the ResourceSlices dra.BuildPool makes for simulated GPUs (as serve does), with the
// DeviceClasses of deployments/static-dra/, through the scheduler's own
// allocator (k8s.io/dynamic-resource-allocation/structured, as the
// DynamicResources plugin calls it). A claim that could never be allocated,
// or that gets the wrong kind of device, fails here rather than pending in
// a cluster.

// draFeatures are the allocator features Kubernetes 1.37 turns on by
// default that our devices and claims use.
var draFeatures = structured.Features{ConsumableCapacity: true, PartitionableDevices: true, DeviceTaints: true, PrioritizedList: true}

// classLister serves DeviceClasses to the allocator.
type classLister []*resourcev1.DeviceClass

func (l classLister) List() ([]*resourcev1.DeviceClass, error) { return l, nil }
func (l classLister) Get(name string) (*resourcev1.DeviceClass, error) {
	for _, c := range l {
		if c.Name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("DeviceClass %q not found", name)
}

// node is one simulated DRA node: its Node object and the ResourceSlices
// the plugin publishes for it.
type node struct {
	obj    *corev1.Node
	slices []*resourcev1.ResourceSlice
	// devices by name, with their slice's driver.
	devices map[string]resourcev1.Device
}

// newNode builds the slices gpublocks publishes for a node of preset's
// simulated GPUs under the config doc.
func newNode(t *testing.T, name, preset, doc string) node {
	t.Helper()
	b, err := sim.New(preset)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	inv, err := gpu.Discover(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	pool := dra.BuildPool(dra.PoolInput{Offers: shape.Offers(inv, cfg, nil), DriverVersion: inv.DriverVersion})
	n := node{
		obj:     &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}},
		devices: map[string]resourcev1.Device{},
	}
	for i, s := range pool.ResourceSlices(name, 1) {
		s.Name = fmt.Sprintf("%s-%d", name, i)
		n.slices = append(n.slices, &s)
		for _, d := range s.Spec.Devices {
			n.devices[d.Name] = d
		}
	}
	if len(n.devices) == 0 {
		t.Fatalf("%s: no devices published", preset)
	}
	return n
}

// shippedClasses are the DeviceClasses of deployments/static-dra/ (the
// chart's are the same: TestStaticDRA).
func shippedClasses(t *testing.T) classLister {
	t.Helper()
	return classLister(of[*resourcev1.DeviceClass](decodeDir(t, "static-dra")))
}

// exampleTemplate returns the ResourceClaimTemplate of an example file, and
// checks that the file's pod uses it.
func exampleTemplate(t *testing.T, file string) *resourcev1.ResourceClaimTemplate {
	t.Helper()
	objs := decodeFile(t, filepath.Join("examples", file))
	tmpl := only[*resourcev1.ResourceClaimTemplate](t, objs)
	checkClaimPod(t, file, only[*corev1.Pod](t, objs), tmpl.Name)
	return tmpl
}

// checkClaimPod asserts that pod gets its devices from a claim made from
// template, and that every container claim names a pod claim.
func checkClaimPod(t *testing.T, file string, pod *corev1.Pod, template string) {
	t.Helper()
	claims := map[string]bool{}
	for _, c := range pod.Spec.ResourceClaims {
		if c.ResourceClaimTemplateName == nil || *c.ResourceClaimTemplateName != template {
			t.Errorf("%s: pod claim %s is not made from template %s", file, c.Name, template)
		}
		claims[c.Name] = true
	}
	used := 0
	for _, c := range pod.Spec.Containers {
		for _, rc := range c.Resources.Claims {
			if !claims[rc.Name] {
				t.Errorf("%s: container %s uses claim %q, which the pod does not have", file, c.Name, rc.Name)
			}
			used++
		}
		for name := range c.Resources.Limits {
			if strings.HasPrefix(string(name), "nvidia.com/") {
				t.Errorf("%s: container %s asks for %s as well as a claim", file, c.Name, name)
			}
		}
	}
	if used == 0 {
		t.Errorf("%s: no container uses the claim", file)
	}
}

// claimFrom makes the claim the control plane makes from a template for a
// pod, defaulted by the API server (allocationMode ExactCount, count 1).
func claimFrom(tmpl *resourcev1.ResourceClaimTemplate, i int) *resourcev1.ResourceClaim {
	c := &resourcev1.ResourceClaim{
		TypeMeta:   metav1.TypeMeta{APIVersion: "resource.k8s.io/v1", Kind: "ResourceClaim"},
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", tmpl.Name, i), Namespace: exampleNamespace, UID: types.UID(fmt.Sprintf("uid-%s-%d", tmpl.Name, i))},
		Spec:       *tmpl.Spec.Spec.DeepCopy(),
	}
	legacyscheme.Scheme.Default(c)
	return c
}

// scheduler is the allocator's view of one node: what is already allocated.
type scheduler struct {
	t       *testing.T
	classes classLister
	node    node
	state   structured.AllocatedState
	cache   *dracel.Cache
}

func newScheduler(t *testing.T, n node) *scheduler {
	return &scheduler{t: t, classes: shippedClasses(t), node: n, cache: dracel.NewCache(10, dracel.Features{EnableConsumableCapacity: true}),
		state: structured.AllocatedState{
			AllocatedDevices:         sets.New[structured.DeviceID](),
			AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
			AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
		}}
}

// allocate runs the scheduler's allocator for claim on the node and, when
// it succeeds, records the allocation as the scheduler would. It returns
// nil when the node cannot take the claim.
func (s *scheduler) allocate(claim *resourcev1.ResourceClaim) []resourcev1.DeviceRequestAllocationResult {
	s.t.Helper()
	ctx := context.Background()
	alloc, err := structured.NewAllocator(ctx, draFeatures, s.state, s.classes, s.node.slices, s.cache)
	if err != nil {
		s.t.Fatal(err)
	}
	res, err := alloc.Allocate(ctx, s.node.obj, []*resourcev1.ResourceClaim{claim})
	if err != nil {
		s.t.Fatalf("allocating %s: %v", claim.Name, err)
	}
	if len(res) == 0 {
		return nil
	}
	for _, r := range res[0].Devices.Results {
		id := structured.MakeDeviceID(r.Driver, r.Pool, r.Device)
		if d := s.node.devices[r.Device]; d.AllowMultipleAllocations != nil && *d.AllowMultipleAllocations {
			s.state.AllocatedSharedDeviceIDs.Insert(structured.MakeSharedDeviceID(id, r.ShareID))
			s.state.AggregatedCapacity.Insert(structured.NewDeviceConsumedCapacity(id, r.ConsumedCapacity))
		} else {
			s.state.AllocatedDevices.Insert(id)
		}
	}
	return res[0].Devices.Results
}

// attr is a device's string or int attribute, as text.
func attr(d resourcev1.Device, name string) string {
	a, ok := d.Attributes[resourcev1.QualifiedName(name)]
	switch {
	case !ok:
		return ""
	case a.StringValue != nil:
		return *a.StringValue
	case a.IntValue != nil:
		return fmt.Sprint(*a.IntValue)
	}
	return fmt.Sprint(a)
}

// TestDRAExampleClaims allocates each example's claim on a node as the
// plugin publishes it, and checks what the scheduler would hand out.
func TestDRAExampleClaims(t *testing.T) {
	const unshaped = "version: v1\n" // every GPU offers whole and blocks
	t.Run("30 blocks of one GPU", func(t *testing.T) {
		n := newNode(t, "gpu-node-1", "dgxa100", unshaped)
		s := newScheduler(t, n)
		tmpl := exampleTemplate(t, "dra-blocks.yaml")
		res := s.allocate(claimFrom(tmpl, 0))
		if len(res) != 1 {
			t.Fatalf("30 blocks: allocation %+v, want one device", res)
		}
		d := n.devices[res[0].Device]
		if attr(d, "type") != dra.TypeBlocks || res[0].Driver != dra.DriverName {
			t.Errorf("30 blocks: got %s device %s of driver %s, want a blocks device", attr(d, "type"), res[0].Device, res[0].Driver)
		}
		if got := res[0].ConsumedCapacity[dra.CapacityBlocks]; got.Value() != 30 || res[0].ShareID == nil {
			t.Errorf("30 blocks: consumed %v (share %v), want exactly 30 blocks of a shared device", res[0].ConsumedCapacity, res[0].ShareID)
		}
		// Three 30-block claims fit one GPU (100 blocks): the node takes
		// 24, none over-committing a GPU, and then no more.
		perGPU := map[string]int{res[0].Device: 30}
		for i := 1; i < 8*3; i++ {
			r := s.allocate(claimFrom(tmpl, i))
			if len(r) != 1 {
				t.Fatalf("claim %d of 30 blocks not allocated with %v in use", i, perGPU)
			}
			perGPU[r[0].Device] += 30
		}
		for dev, used := range perGPU {
			if used > dra.BlocksPerGPU {
				t.Errorf("%s over-committed: %d blocks", dev, used)
			}
		}
		if r := s.allocate(claimFrom(tmpl, 99)); r != nil {
			t.Errorf("a 30-block claim allocated %+v on a node whose 8 GPUs hold 90 blocks each (%v)", r, perGPU)
		}
	})
	t.Run("one 1g.10gb MIG slice", func(t *testing.T) {
		n := newNode(t, "gpu-node-1", "dgxa100-mig", unshaped)
		s := newScheduler(t, n)
		tmpl := exampleTemplate(t, "dra-mig.yaml")
		want := 0
		for _, d := range n.devices {
			if attr(d, "type") == dra.TypeMIG && attr(d, "profile") == "1g.10gb" {
				want++
			}
		}
		if want == 0 {
			t.Fatal("dgxa100-mig publishes no 1g.10gb device")
		}
		got := map[string]bool{}
		for i := 0; ; i++ {
			res := s.allocate(claimFrom(tmpl, i))
			if res == nil {
				break
			}
			if len(res) != 1 {
				t.Fatalf("1g.10gb: allocation %+v, want one device", res)
			}
			d := n.devices[res[0].Device]
			if attr(d, "type") != dra.TypeMIG || attr(d, "profile") != "1g.10gb" || got[d.Name] {
				t.Fatalf("1g.10gb claim %d got device %s (type %s, profile %s)", i, d.Name, attr(d, "type"), attr(d, "profile"))
			}
			got[d.Name] = true
		}
		// Each 1g.10gb device consumes its own memory slice, so every one
		// is allocatable; none is handed out twice.
		if len(got) != want {
			t.Errorf("allocated %d distinct 1g.10gb devices, the node publishes %d", len(got), want)
		}
	})
	t.Run("two whole GPUs", func(t *testing.T) {
		n := newNode(t, "gpu-node-1", "dgxa100", unshaped)
		s := newScheduler(t, n)
		tmpl := exampleTemplate(t, "dra-whole.yaml")
		var all []string
		for i := range 4 {
			res := s.allocate(claimFrom(tmpl, i))
			if len(res) != 2 {
				t.Fatalf("claim %d of two GPUs: allocation %+v, want two devices", i, res)
			}
			for _, r := range res {
				if d := n.devices[r.Device]; attr(d, "type") != dra.TypeGPU {
					t.Errorf("two GPUs: got %s device %s", attr(d, "type"), r.Device)
				}
				all = append(all, r.Device)
			}
		}
		if slices.Sort(all); len(slices.Compact(slices.Clone(all))) != 8 {
			t.Errorf("four claims of two GPUs got %v, want all 8 GPUs once each", all)
		}
		if r := s.allocate(claimFrom(tmpl, 4)); r != nil {
			t.Errorf("a fifth pair of GPUs allocated on an 8-GPU node: %+v", r)
		}
		// A whole GPU excludes the blocks device of the same GPU (shared
		// counters): no blocks left on the node.
		if r := s.allocate(claimFrom(exampleTemplate(t, "dra-blocks.yaml"), 0)); r != nil {
			t.Errorf("blocks allocated on a GPU that is allocated whole: %+v", r)
		}
	})
}

// TestDRANoNodeTotalLimit is the README's claim: in DRA mode a 60-block pod
// is not sent to a node whose free blocks are 40 + 40 (the device-plugin
// scheduler sees only the node's total and sends it, and the kubelet then
// refuses it). Here every GPU of the node has 40 blocks free, 320 in all:
// the scheduler's allocator refuses 60, so the scheduler filters the node
// out, and takes 40.
func TestDRANoNodeTotalLimit(t *testing.T) {
	n := newNode(t, "gpu-node-1", "dgxa100", "version: v1\ngpus: [{match: {model: \"*\"}, shape: blocks}]\n")
	s := newScheduler(t, n)
	tmpl := exampleTemplate(t, "dra-blocks.yaml")
	withBlocks := func(k int64, i int) *resourcev1.ResourceClaim {
		c := claimFrom(tmpl, i)
		c.Spec.Devices.Requests[0].Exactly.Capacity.Requests[dra.CapacityBlocks] = *resource.NewQuantity(k, resource.DecimalSI)
		return c
	}
	for i := range 8 {
		if s.allocate(withBlocks(60, i)) == nil {
			t.Fatalf("60 blocks not allocated on GPU %d of an empty node", i)
		}
	}
	if r := s.allocate(withBlocks(60, 8)); r != nil {
		t.Errorf("60 blocks allocated with 40 free on every GPU: %+v", r)
	}
	if r := s.allocate(withBlocks(40, 9)); len(r) != 1 {
		t.Errorf("40 blocks not allocated with 40 free on every GPU: %+v", r)
	}
}

// TestDRADeviceClassesSelect evaluates each shipped DeviceClass's selector
// on every device the plugin publishes (whole, blocks and MIG): a class
// selects exactly the devices of its type.
func TestDRADeviceClassesSelect(t *testing.T) {
	nodes := []node{
		newNode(t, "a", "dgxa100", "version: v1\n"),
		newNode(t, "b", "dgxa100-mig", "version: v1\n"),
	}
	for _, c := range shippedClasses(t) {
		prog := compileSelector(t, "DeviceClass "+c.Name, c.Spec.Selectors[0].CEL.Expression)
		matched := 0
		for _, n := range nodes {
			for _, d := range n.devices {
				ok, _, err := prog.DeviceMatches(context.Background(), dracel.Device{
					Driver: dra.DriverName, AllowMultipleAllocations: d.AllowMultipleAllocations, Attributes: d.Attributes, Capacity: d.Capacity,
				})
				if err != nil {
					t.Fatalf("DeviceClass %s on device %s: %v", c.Name, d.Name, err)
				}
				if want := attr(d, "type") == deviceTypes[c.Name]; ok != want {
					t.Errorf("DeviceClass %s selects %s (type %s): %v, want %v", c.Name, d.Name, attr(d, "type"), ok, want)
				}
				if ok {
					matched++
				}
			}
		}
		if matched == 0 {
			t.Errorf("DeviceClass %s selects no device of dgxa100 or dgxa100-mig", c.Name)
		}
	}
}

// TestDRAExampleSelectors compiles every CEL selector of the example claim
// templates with the scheduler's compiler.
func TestDRAExampleSelectors(t *testing.T) {
	compiled := 0
	for _, tmpl := range of[*resourcev1.ResourceClaimTemplate](decodeDir(t, "examples")) {
		for _, r := range tmpl.Spec.Spec.Devices.Requests {
			if r.Exactly == nil {
				continue
			}
			for _, sel := range r.Exactly.Selectors {
				if sel.CEL == nil {
					t.Errorf("template %s request %s: a selector without CEL", tmpl.Name, r.Name)
					continue
				}
				compileSelector(t, "template "+tmpl.Name+" request "+r.Name, sel.CEL.Expression)
				compiled++
			}
		}
	}
	if compiled == 0 {
		t.Error("no example claim template has a CEL selector (the MIG one picks its profile with one)")
	}
}

// TestDRAExtendedResourceExample: the unchanged pod asks for the extended
// resource the whole-GPU DeviceClass names, and nothing else of ours.
func TestDRAExtendedResourceExample(t *testing.T) {
	pod := only[*corev1.Pod](t, decodeFile(t, filepath.Join("examples", "dra-extended-resource.yaml")))
	var ext string
	for _, c := range shippedClasses(t) {
		if c.Spec.ExtendedResourceName != nil {
			ext = *c.Spec.ExtendedResourceName
		}
	}
	if len(pod.Spec.ResourceClaims) != 0 || len(pod.Spec.Containers) != 1 {
		t.Fatalf("pod %s: want one container and no claims of its own", pod.Name)
	}
	res := pod.Spec.Containers[0].Resources
	if q, ok := res.Limits[corev1.ResourceName(ext)]; ext == "" || !ok || q.Value() != 1 || len(res.Limits) != 1 {
		t.Errorf("pod %s limits %v, want exactly %s: 1 (the DeviceClass's extendedResourceName)", pod.Name, res.Limits, ext)
	}
}
