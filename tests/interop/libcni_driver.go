// A minimal libcni client for pycni's interop tests, built against Debian's libcni
// (golang-github-appc-cni-dev). It plays the part of containerd, CRI-O or podman:
//
//	libcni_driver add|check|del <netconfdir> <network> <netns> <containerID> <ifname>
//
// CNI_PATH, CNI_CACHE_DIR, CNI_ARGS (K=V;...) and CAP_ARGS (JSON) come from the environment.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 7 {
		fail(fmt.Errorf("usage: %s add|check|del <netconfdir> <network> <netns> <containerID> <ifname>", os.Args[0]))
	}
	list, err := libcni.LoadConfList(os.Args[2], os.Args[3])
	if err != nil {
		fail(err)
	}
	rt := &libcni.RuntimeConf{ContainerID: os.Args[5], NetNS: os.Args[4], IfName: os.Args[6]}
	if args := os.Getenv("CNI_ARGS"); args != "" {
		for _, pair := range strings.Split(args, ";") {
			kv := strings.SplitN(pair, "=", 2)
			rt.Args = append(rt.Args, [2]string{kv[0], kv[1]})
		}
	}
	if caps := os.Getenv("CAP_ARGS"); caps != "" {
		if err := json.Unmarshal([]byte(caps), &rt.CapabilityArgs); err != nil {
			fail(err)
		}
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	ctx := context.Background()
	switch os.Args[1] {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		_ = result.Print()
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}
