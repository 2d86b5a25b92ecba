package daemon

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/metadata/fake"

	"github.com/gpublocks/gpublocks/config"
)

func TestReadNodeLabel(t *testing.T) {
	scheme := fake.NewTestScheme()
	require.NoError(t, metav1.AddMetaToScheme(scheme))
	labelled := &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{config.NodeLabel: "blocks"}},
	}
	plain := &metav1.PartialObjectMetadata{TypeMeta: labelled.TypeMeta, ObjectMeta: metav1.ObjectMeta{Name: "b"}}
	client := fake.NewSimpleMetadataClient(scheme, labelled, plain)

	got, err := ReadNodeLabel(context.Background(), client, "a")
	require.NoError(t, err)
	require.Equal(t, "blocks", got)
	got, err = ReadNodeLabel(context.Background(), client, "b")
	require.NoError(t, err)
	require.Empty(t, got)
	_, err = ReadNodeLabel(context.Background(), client, "gone")
	require.ErrorContains(t, err, "reading node gone")
}
