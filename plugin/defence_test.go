package plugin

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Requests the kubelet would never send, but a caller on the socket can.

func TestAllocateRefusesDeviceInTwoContainers(t *testing.T) {
	c := servedEnv(t, Options{})
	cases := map[string]struct {
		req     *pluginapi.AllocateRequest
		wantMsg []string
	}{
		"same device in two containers": {
			req:     containers([]string{"g0"}, []string{"g0"}),
			wantMsg: []string{gpu, "duplicate device IDs", `device "g0" is requested by container requests 0 and 1`},
		},
		"among others, third container": {
			req:     containers([]string{"g0", "g1"}, []string{"g2"}, []string{"g3", "g1"}),
			wantMsg: []string{`device "g1" is requested by container requests 0 and 2`},
		},
		"twice within the second container": {
			req:     containers([]string{"g0"}, []string{"g1", "g1"}),
			wantMsg: []string{"container request 1", `duplicate device IDs: "g1"`},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := c.Allocate(context.Background(), tc.req)
			requireInvalid(t, err, tc.wantMsg...)
		})
	}
}

func TestCheckContainersLargeResource(t *testing.T) {
	// Over stackDevices devices the cross-container bitset moves to the heap.
	var many []string
	for i := range stackDevices + 100 {
		many = append(many, fmt.Sprintf("d%d", i))
	}
	snap, err := newSnapshot(newTestResource(gpu, many...))
	require.NoError(t, err)
	last := many[len(many)-1]
	require.NoError(t, snap.checkContainers(gpu, containers([]string{"d0"}, []string{last}).ContainerRequests))
	require.ErrorIs(t, snap.checkContainers(gpu, containers([]string{last}, []string{"d0", last}).ContainerRequests), ErrDuplicateDevice)
}

// preferResource answers every Prefer with a fixed list, right or wrong.
type preferResource struct {
	*testResource
	answer []string
}

func (r *preferResource) Prefer([]string, []string, int) ([]string, error) { return r.answer, nil }

func TestGetPreferredAllocationRefusesInvalidAnswer(t *testing.T) {
	cases := map[string]struct {
		answer   []string
		wantCode codes.Code
		wantMsg  string
	}{
		"valid":           {answer: []string{"g1", "g0"}},
		"nothing to pick": {answer: []string{}},
		"device twice":    {answer: []string{"g0", "g0"}, wantCode: codes.Internal, wantMsg: `duplicate device IDs: "g0"`},
		"not offered":     {answer: []string{"g0", "gone"}, wantCode: codes.Internal, wantMsg: `unknown device IDs: "gone"`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t, Options{})
			require.NoError(t, e.m.Update([]Resource{&preferResource{newTestResource(gpu, "g0", "g1"), tc.answer}}))
			k := startKubelet(t, e.kubelet)
			e.run(t)
			k.registrations(t, 1, waitLong)
			resp, err := e.dial(t, gpu).GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
				ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
					AvailableDeviceIDs: []string{"g0", "g0", "g1"}, AllocationSize: 2,
				}},
			})
			if tc.wantCode == codes.OK {
				require.NoError(t, err)
				require.Equal(t, len(tc.answer), len(resp.ContainerResponses[0].DeviceIDs))
				return
			}
			require.Equal(t, tc.wantCode, status.Code(err), "%v", err)
			require.Contains(t, status.Convert(err).Message(), "chose an invalid allocation")
			require.Contains(t, status.Convert(err).Message(), tc.wantMsg)
		})
	}
}

func TestQuoteID(t *testing.T) {
	long := strings.Repeat("a", 3<<20)
	cases := map[string]struct {
		id, want string
	}{
		"short":                    {id: "GPU-a::7", want: `"GPU-a::7"`},
		"control characters":       {id: "a\nb\x00", want: `"a\nb\x00"`},
		"invalid UTF-8":            {id: "a\xff", want: `"a\xff"`},
		"exactly the limit":        {id: long[:MaxQuotedID], want: `"` + long[:MaxQuotedID] + `"`},
		"3 MiB":                    {id: long, want: `"` + long[:MaxQuotedID] + `"… (3145728 bytes)`},
		"cut before a broken rune": {id: long[:MaxQuotedID-1] + "é" + long[:10], want: `"` + long[:MaxQuotedID-1] + `"… (75 bytes)`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, tc.want, QuoteID(tc.id))
		})
	}
}

func TestErrorsTruncateLongIDs(t *testing.T) {
	c := servedEnv(t, Options{})
	// Twelve unknown IDs of 300 KiB each: ~3.5 MiB, under gRPC's 4 MiB.
	var huge []string
	for i := range 12 {
		huge = append(huge, fmt.Sprintf("%c", 'a'+i)+strings.Repeat("x", 300<<10))
	}
	cases := map[string]func() error{
		"Allocate unknown": func() error {
			_, err := c.Allocate(context.Background(), containers(huge))
			return err
		},
		"Allocate repeated": func() error {
			_, err := c.Allocate(context.Background(), containers([]string{"g0"}, []string{huge[0], huge[0]}))
			return err
		},
		"GetPreferredAllocation required": func() error {
			_, err := c.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
				ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
					MustIncludeDeviceIDs: huge, AllocationSize: 12,
				}},
			})
			return err
		},
	}
	for name, call := range cases {
		t.Run(name, func(t *testing.T) {
			err := call()
			requireInvalid(t, err)
			msg := status.Convert(err).Message()
			require.Less(t, len(msg), 2048, "message of %d bytes: %.300s", len(msg), msg)
			require.Regexp(t, `"[a-l]x+"… \(307201 bytes\)`, msg)
		})
	}
}

// rawCodec sends a request's bytes as they are, so that a test can send
// what the protobuf library refuses to encode, and decodes answers as
// protobuf.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.([]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// field encodes one length-delimited protobuf field.
func field(num protowire.Number, b []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), b)
}

func TestInvalidUTF8IsInvalidArgument(t *testing.T) {
	e := newTestEnv(t, Options{})
	require.NoError(t, e.m.Update([]Resource{newTestResource(gpu, "g0", "g1")}))
	k := startKubelet(t, e.kubelet)
	e.run(t)
	k.registrations(t, 1, waitLong)
	conn, err := grpc.NewClient("unix:"+e.socket(gpu), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })

	bad := []byte("g0\xff")
	size := protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 1)
	cases := map[string]struct {
		method string
		req    []byte
		resp   proto.Message
	}{
		// AllocateRequest{container_requests: [{devices_ids: [bad]}]}
		"Allocate": {
			method: "/v1beta1.DevicePlugin/Allocate",
			req:    field(1, field(1, bad)),
			resp:   &pluginapi.AllocateResponse{},
		},
		// PreferredAllocationRequest{container_requests: [{available_deviceIDs: [bad], allocation_size: 1}]}
		"GetPreferredAllocation available": {
			method: "/v1beta1.DevicePlugin/GetPreferredAllocation",
			req:    field(1, append(field(1, bad), size...)),
			resp:   &pluginapi.PreferredAllocationResponse{},
		},
		// … must_include_deviceIDs: [bad]
		"GetPreferredAllocation required": {
			method: "/v1beta1.DevicePlugin/GetPreferredAllocation",
			req:    field(1, append(append(field(1, []byte("g1")), field(2, bad)...), size...)),
			resp:   &pluginapi.PreferredAllocationResponse{},
		},
		// Not UTF-8 but not protobuf either: a truncated field.
		"Allocate truncated": {
			method: "/v1beta1.DevicePlugin/Allocate",
			req:    field(1, field(1, []byte("g0")))[:4],
			resp:   &pluginapi.AllocateResponse{},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := conn.Invoke(context.Background(), tc.method, tc.req, tc.resp, grpc.ForceCodecV2(rawCodec{}))
			requireInvalid(t, err, gpu, "malformed request", "does not decode")
		})
	}
	// The same connection still serves well-formed requests.
	var resp pluginapi.AllocateResponse
	require.NoError(t, conn.Invoke(context.Background(), "/v1beta1.DevicePlugin/Allocate",
		field(1, field(1, []byte("g0"))), &resp, grpc.ForceCodecV2(rawCodec{})))
	require.Equal(t, "g0", resp.ContainerResponses[0].Envs["TEST_IDS"])
}
