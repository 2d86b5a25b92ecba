package deployments

import (
	"context"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	plugincel "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/policy/validating"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/environment"
	"k8s.io/utils/ptr"
)

// compilePolicy compiles a ValidatingAdmissionPolicy the way the API
// server's ValidatingAdmissionPolicy plugin does (k8s.io/apiserver v0.37:
// variables composed into the environment, match conditions, validations
// and message expressions compiled against it), so that its decisions can
// be asked without a cluster.
func compilePolicy(t *testing.T, p *admissionregistrationv1.ValidatingAdmissionPolicy) validating.Validator {
	t.Helper()
	compiler, err := plugincel.NewCompositedCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
	if err != nil {
		t.Fatal(err)
	}
	if p.Spec.ParamKind != nil {
		t.Fatalf("%s: params are not supported here", p.Name)
	}
	withAuthz := plugincel.OptionalVariableDeclarations{HasAuthorizer: true}
	var vars []plugincel.NamedExpressionAccessor
	for _, v := range p.Spec.Variables {
		vars = append(vars, &validating.Variable{Name: v.Name, Expression: v.Expression})
	}
	compiler.CompileAndStoreVariables(vars, withAuthz, environment.StoredExpressions)
	var conds []plugincel.ExpressionAccessor
	for i := range p.Spec.MatchConditions {
		conds = append(conds, (*matchconditions.MatchCondition)(&p.Spec.MatchConditions[i]))
	}
	var matcher matchconditions.Matcher
	if len(conds) > 0 {
		matcher = matchconditions.NewMatcher(compiler.CompileCondition(conds, withAuthz, environment.StoredExpressions), p.Spec.FailurePolicy, "policy", "validate", p.Name)
	}
	validations := make([]plugincel.ExpressionAccessor, len(p.Spec.Validations))
	messages := make([]plugincel.ExpressionAccessor, len(p.Spec.Validations))
	for i, v := range p.Spec.Validations {
		validations[i] = &validating.ValidationCondition{Expression: v.Expression, Message: v.Message, Reason: v.Reason}
		if v.MessageExpression != "" {
			messages[i] = &validating.MessageExpressionCondition{MessageExpression: v.MessageExpression}
		}
	}
	return validating.NewValidator(
		compiler.CompileCondition(validations, withAuthz, environment.StoredExpressions),
		matcher,
		compiler.CompileCondition(nil, withAuthz, environment.StoredExpressions),
		compiler.CompileCondition(messages, plugincel.OptionalVariableDeclarations{}, environment.StoredExpressions),
		p.Spec.FailurePolicy,
		nil,
	)
}

// admit asks a compiled policy about one request on a ResourceSlice, and
// returns "" when it lets the request through, else the denial's message.
func admit(t *testing.T, v validating.Validator, op admission.Operation, obj, old *resourcev1.ResourceSlice, who user.Info) string {
	t.Helper()
	gvk := resourcev1.SchemeGroupVersion.WithKind("ResourceSlice")
	gvr := resourcev1.SchemeGroupVersion.WithResource("resourceslices")
	var o, oo runtime.Object
	name := ""
	if obj != nil {
		o, name = obj, obj.Name
	}
	if old != nil {
		oo, name = old, old.Name
	}
	attrs := &admission.VersionedAttributes{
		Attributes:    admission.NewAttributesRecord(o, oo, gvk, "", name, gvr, "", op, nil, false, who),
		VersionedKind: gvk,
	}
	if obj != nil {
		attrs.VersionedObject = admission.NewLazyObject(obj)
	}
	if old != nil {
		attrs.VersionedOldObject = admission.NewLazyObject(old)
	}
	res := v.Validate(context.Background(), gvr, attrs, nil, nil, celconfig.RuntimeCELCostBudget, nil)
	var denied []string
	for _, d := range res.Decisions {
		if d.Action == validating.ActionDeny {
			denied = append(denied, d.Message)
		}
	}
	return strings.Join(denied, "; ")
}

// TestSlicePolicyDecisions asks the shipped ValidatingAdmissionPolicy (the
// chart's, with the release's service account, and static-dra's) what it
// decides: a plugin pod writes its own node's ResourceSlices and no other
// node's, a token without a node writes none, and nobody else is affected.
func TestSlicePolicyDecisions(t *testing.T) {
	chart, _ := mustRender(t, "prod", "gpu-system", "kubeletAPI: dra")
	policies := map[string]struct {
		p    *admissionregistrationv1.ValidatingAdmissionPolicy
		user string
	}{
		"chart":      {only[*admissionregistrationv1.ValidatingAdmissionPolicy](t, chart), serviceaccount.MakeUsername("gpu-system", "prod-gpublocks")},
		"static-dra": {only[*admissionregistrationv1.ValidatingAdmissionPolicy](t, decodeDir(t, "static-dra")), serviceaccount.MakeUsername("gpublocks", "gpublocks")},
	}
	slice := func(node string) *resourcev1.ResourceSlice {
		s := &resourcev1.ResourceSlice{
			TypeMeta:   metav1.TypeMeta{APIVersion: "resource.k8s.io/v1", Kind: "ResourceSlice"},
			ObjectMeta: metav1.ObjectMeta{Name: "slice-" + node},
			Spec:       resourcev1.ResourceSliceSpec{Driver: "gpu.gpublocks.io", Pool: resourcev1.ResourcePool{Name: node, ResourceSliceCount: 1}},
		}
		if node == "" {
			s.Spec.AllNodes = ptr.To(true)
		} else {
			s.Spec.NodeName = ptr.To(node)
		}
		return s
	}
	onNode := func(name, node string) user.Info {
		u := &user.DefaultInfo{Name: name, Groups: []string{"system:serviceaccounts"}}
		if node != "" {
			u.Extra = map[string][]string{serviceaccount.NodeNameKey: {node}}
		}
		return u
	}
	for pname, pol := range policies {
		v := compilePolicy(t, pol.p)
		plugin := func(node string) user.Info { return onNode(pol.user, node) }
		for name, tc := range map[string]struct {
			op       admission.Operation
			obj, old *resourcev1.ResourceSlice
			who      user.Info
			want     string // "" admitted, else part of the denial
		}{
			"create own":           {admission.Create, slice("node-a"), nil, plugin("node-a"), ""},
			"update own":           {admission.Update, slice("node-a"), slice("node-a"), plugin("node-a"), ""},
			"delete own":           {admission.Delete, nil, slice("node-a"), plugin("node-a"), ""},
			"create other node's":  {admission.Create, slice("node-b"), nil, plugin("node-a"), "gpublocks on node node-a may not write ResourceSlices of node node-b"},
			"update other node's":  {admission.Update, slice("node-b"), slice("node-b"), plugin("node-a"), "may not write ResourceSlices of node node-b"},
			"delete other node's":  {admission.Delete, nil, slice("node-b"), plugin("node-a"), "may not write ResourceSlices of node node-b"},
			"create cluster-wide":  {admission.Create, slice(""), nil, plugin("node-a"), "may not write ResourceSlices without spec.nodeName"},
			"token without a node": {admission.Create, slice("node-a"), nil, plugin(""), "only from a pod on a node"},
			"token bound to no pod": {admission.Create, slice("node-a"), nil,
				&user.DefaultInfo{Name: pol.user, Extra: map[string][]string{user.CredentialIDKey: {"JTI=x"}}}, "only from a pod on a node"},
			"another service account":    {admission.Create, slice("node-b"), nil, onNode(serviceaccount.MakeUsername("gpu-system", "other"), "node-a"), ""},
			"same name, other namespace": {admission.Create, slice("node-b"), nil, onNode(serviceaccount.MakeUsername("elsewhere", strings.TrimPrefix(pol.user[strings.LastIndex(pol.user, ":"):], ":")), "node-a"), ""},
			"the node's kubelet":         {admission.Create, slice("node-b"), nil, onNode("system:node:node-a", ""), ""},
		} {
			t.Run(pname+"/"+name, func(t *testing.T) {
				got := admit(t, v, tc.op, tc.obj, tc.old, tc.who)
				switch {
				case tc.want == "" && got != "":
					t.Errorf("denied: %s", got)
				case tc.want != "" && got == "":
					t.Errorf("admitted, want denied with %q", tc.want)
				case tc.want != "" && !strings.Contains(got, tc.want):
					t.Errorf("denied with %q, want %q", got, tc.want)
				}
			})
		}
	}
}
