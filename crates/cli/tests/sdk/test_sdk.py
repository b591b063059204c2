"""Microsoft's own Python SDK (azure-mgmt-compute, azure-mgmt-network, azure-mgmt-resource)
against a local scaleset daemon: resource groups created and checked for existence (Unicode
names too), a load balancer and its child resources, a scale set created, read, updated to a new
image, its instances listed, per-instance actions, a rolling upgrade started and its status read,
an api-version the type does not speak refused, then everything deleted. The scale set starts with
one real instance (a machine booted from BOOT_IMAGE, baked by sdk.rs on the shared base) that
every per-instance action is called on. Run by crates/cli/tests/sdk.rs with SCALESET_ENDPOINT,
SCALESET_HOME, SCALESET_EXE, BOOT_IMAGE and LB_PORT set.

Nothing here is scaleset-specific except how the client is pointed at us: base_url, and a static
bearer token sent by a custom authentication policy (azure-core's BearerTokenCredentialPolicy
refuses plain-http URLs; a client's `authentication_policy=` is the supported replacement).
"""
import json
import os
import subprocess
import sys
import time

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ResponseNotReadError
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute import models as cm
from azure.mgmt.network import NetworkManagementClient
from azure.mgmt.network import models as nm
from azure.mgmt.resource.resources import ResourceManagementClient

from scaleset_images import docker_save

ENDPOINT = os.environ["SCALESET_ENDPOINT"]
HOME = os.environ["SCALESET_HOME"]
EXE = os.environ["SCALESET_EXE"]
LB_PORT = int(os.environ["LB_PORT"])
BOOT_IMAGE = os.environ["BOOT_IMAGE"]
SUB = "00000000-0000-0000-0000-000000000000"
RG = "sdk-rg"
TOKEN = open(os.path.join(HOME, "token")).read().strip()
EXCHANGES = []


class StaticToken:
    """A TokenCredential with the daemon's token (the clients require a credential)."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken(TOKEN, int(time.time()) + 3600)


class BearerOverHttp(SansIOHTTPPolicy):
    """Sends the daemon's bearer token; the daemon listens on loopback over plain HTTP."""

    def on_request(self, request):
        request.http_request.headers["Authorization"] = "Bearer " + TOKEN


class Recorder(SansIOHTTPPolicy):
    """Remembers every exchange, to check that the SDK followed our long-running operations."""

    seen = []

    def on_response(self, request, response):
        q, r = request.http_request, response.http_response
        self.seen.append((q.method, q.url, r.status_code, r.headers))
        # Everything exchanged, for the Rust side to check against Microsoft's specs.
        body = q.body
        try:
            text = r.text()
        except ResponseNotReadError:
            # The first response of an LRO is streamed to the poller; reading it here would
            # take it away. Its resource is read again by the poll, which is recorded.
            text = None
        EXCHANGES.append({
            "method": q.method,
            "url": q.url,
            "request": json.loads(body) if body else None,
            "status": r.status_code,
            "response": json.loads(text) if text else None,
            "streamed": text is None,
        })


def polled(method, url_part):
    """The exchanges after the last `method` on a URL containing `url_part`: the initial reply
    must be an LRO (Azure-AsyncOperation) and the SDK must have polled it to Succeeded."""
    idx = max(i for i, (m, u, _, _) in enumerate(Recorder.seen)
              if m == method and url_part.lower() in u.lower())
    first = Recorder.seen[idx]
    assert "Azure-AsyncOperation" in first[3], f"{method} {url_part}: no Azure-AsyncOperation: {first}"
    polls = [x for x in Recorder.seen[idx + 1:] if "/operations/" in x[1]]
    assert polls, f"{method} {url_part}: the SDK did not poll the operation"
    return first


def step(msg):
    print("sdk:", msg, flush=True)


def scaleset(*args):
    env = dict(os.environ, SCALESET_HOME=HOME)
    out = subprocess.run([EXE, *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"scaleset {args}: {out.stderr}{out.stdout}"
    return out.stdout


def in_instance(script):
    """stdout of a shell script run inside instance 0 (az vmss run-command invoke; the spec of
    runCommand is not in the shared folder, so it is called outside the SDK)."""
    out = json.loads(scaleset("vmss", "run-command", "invoke", "-g", RG, "-n", "sdk", "--instance-id", "0",
                              "--command-id", "RunShellScript", "--scripts", script))
    msg = out["value"][0]["message"]
    assert msg.startswith("Enable succeeded"), msg
    return msg.split("[stdout]\n", 1)[1].split("\n[stderr]", 1)[0].split()


def one_instance(compute):
    """Every per-instance action on instance 0, each LRO waited on, then its state as Azure
    reports it: power state codes, the instance id, latestModelApplied, and what survives a
    reboot (/run is a tmpfs per boot) or a reimage (a fresh disk)."""
    vm_ops = compute.virtual_machine_scale_set_vms

    def after(action, code, **kwargs):
        step(f"instance 0: {action.__name__} -> PowerState/{code}")
        action(RG, "sdk", "0", **kwargs).result()
        polled("POST", "/virtualmachines/0/")
        vm = vm_ops.get(RG, "sdk", "0", expand="instanceView")
        codes = [s.code for s in vm.instance_view.statuses]
        assert codes == ["ProvisioningState/succeeded", f"PowerState/{code}"], (action.__name__, codes)
        assert vm.instance_id == "0" and vm.provisioning_state == "Succeeded", vm
        view = vm_ops.get_instance_view(RG, "sdk", "0")
        assert [s.code for s in view.statuses] == codes, view.statuses
        return vm

    vms = list(vm_ops.list(RG, "sdk", expand="instanceView"))
    assert [(v.instance_id, v.latest_model_applied) for v in vms] == [("0", True)], vms
    assert vms[0].instance_view.statuses[1].code == "PowerState/running", vms[0].instance_view.statuses
    assert in_instance("touch /root/disk && ls /root") == ["disk"]
    after(vm_ops.begin_power_off, "stopped")
    after(vm_ops.begin_start, "running")
    after(vm_ops.begin_deallocate, "deallocated")
    after(vm_ops.begin_redeploy, "running")  # Azure powers a redeployed VM on
    in_instance("touch /run/booted")
    after(vm_ops.begin_restart, "running")
    assert in_instance("ls /root; ls /run/booted 2>/dev/null; true") == ["disk"], "a reboot, the disk kept"

    step("a new VM size (Manual mode): the instance is behind the model until it is reimaged")
    compute.virtual_machine_scale_sets.begin_update(RG, "sdk", cm.VirtualMachineScaleSetUpdate(
        sku=cm.Sku(name="Standard_B1ms", tier="Standard"))).result()
    assert not vm_ops.get(RG, "sdk", "0").latest_model_applied
    vm = after(vm_ops.begin_reimage, "running")
    assert vm.latest_model_applied, vm
    assert in_instance("ls /root") == [], "a reimage starts on a fresh disk"
    assert after(vm_ops.begin_reimage_all, "running").latest_model_applied

    step("instance 0: begin_delete removes it (and lowers the capacity, as Azure does)")
    vm_ops.begin_delete(RG, "sdk", "0").result()
    polled("DELETE", "/virtualMachines/0")
    assert list(vm_ops.list(RG, "sdk")) == []
    assert compute.virtual_machine_scale_sets.get(RG, "sdk").sku.capacity == 0
    try:
        vm_ops.begin_start(RG, "sdk", "0")
        raise AssertionError("begin_start on a deleted instance succeeded")
    except ResourceNotFoundError as e:
        assert e.status_code == 404 and e.error.code == "NotFound", e


def main():
    kwargs = dict(base_url=ENDPOINT, authentication_policy=BearerOverHttp(), per_call_policies=[Recorder()])
    compute = ComputeManagementClient(StaticToken(), SUB, **kwargs)
    network = NetworkManagementClient(StaticToken(), SUB, **kwargs)

    resources = ResourceManagementClient(StaticToken(), SUB, **kwargs)

    step("resource groups (check_existence is a HEAD: 204 or 404)")
    assert not resources.resource_groups.check_existence(RG)
    rg = resources.resource_groups.create_or_update(RG, {"location": "local"})
    assert rg.name == RG and rg.properties.provisioning_state == "Succeeded", rg
    assert resources.resource_groups.check_existence(RG)
    assert resources.resource_groups.get(RG).location == "local"
    # Azure's naming rule admits Unicode letters and digits (and compares without case).
    uni = "Grupo-Producción_(1).資源"
    assert resources.resource_groups.create_or_update(uni, {"location": "local"}).name == uni
    assert resources.resource_groups.check_existence(uni.upper())
    assert uni in [g.name for g in resources.resource_groups.list()]
    resources.resource_groups.begin_delete(uni).result()
    assert not resources.resource_groups.check_existence(uni)

    # Outside the SDK: a second image (they are baked or imported, never PUT).
    path = os.path.join(HOME, "sdk-img2.tar")
    docker_save(path, "sdk-img2")
    scaleset("image", "import", "--source", path, "-n", "sdk-img2")
    image_id = lambda n: f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/{n}"

    step("load balancer")
    lb_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/loadBalancers/sdk-lb"
    lb = network.load_balancers.begin_create_or_update(RG, "sdk-lb", nm.LoadBalancer(
        location="local",
        sku=nm.LoadBalancerSku(name="Standard"),
        frontend_ip_configurations=[nm.FrontendIPConfiguration(name="fe", private_ip_address="127.0.0.1")],
        backend_address_pools=[nm.BackendAddressPool(name="be")],
        probes=[nm.Probe(name="http", protocol="Http", port=80, request_path="/health",
                         interval_in_seconds=5, probe_threshold=1)],
        load_balancing_rules=[nm.LoadBalancingRule(
            name="web", protocol="Tcp", frontend_port=LB_PORT, backend_port=80,
            frontend_ip_configuration=nm.SubResource(id=lb_id + "/frontendIPConfigurations/fe"),
            backend_address_pool=nm.SubResource(id=lb_id + "/backendAddressPools/be"),
            probe=nm.SubResource(id=lb_id + "/probes/http"))],
    )).result()
    assert lb.provisioning_state == "Succeeded", lb
    assert lb.probes[0].id == lb_id + "/probes/http", lb.probes[0].id
    assert lb.load_balancing_rules[0].idle_timeout_in_minutes == 4  # Azure's default, filled in
    assert network.load_balancers.get(RG, "sdk-lb").name == "sdk-lb"
    assert resources.resources.check_existence_by_id(lb_id, api_version="2024-05-01")
    assert not resources.resources.check_existence_by_id(lb_id + "x", api_version="2024-05-01")
    # The generic form, with an empty parent resource path (`Microsoft.Network//loadBalancers`).
    assert resources.resources.check_existence(RG, "Microsoft.Network", "", "loadBalancers", "sdk-lb",
                                               api_version="2024-05-01")

    step("load balancer child resources")
    assert [p.name for p in network.load_balancer_probes.list(RG, "sdk-lb")] == ["http"]
    probe = network.load_balancer_probes.get(RG, "sdk-lb", "http")
    assert (probe.id, probe.request_path, probe.probe_threshold) == (lb_id + "/probes/http", "/health", 1), probe
    rules = list(network.load_balancer_load_balancing_rules.list(RG, "sdk-lb"))
    assert [r.name for r in rules] == ["web"] and rules[0].frontend_port == LB_PORT, rules
    rule = network.load_balancer_load_balancing_rules.get(RG, "sdk-lb", "web")
    assert rule.probe.id == lb_id + "/probes/http", rule
    assert [p.name for p in network.load_balancer_backend_address_pools.list(RG, "sdk-lb")] == ["be"]
    assert network.load_balancer_backend_address_pools.get(RG, "sdk-lb", "be").id == lb_id + "/backendAddressPools/be"
    fes = list(network.load_balancer_frontend_ip_configurations.list(RG, "sdk-lb"))
    assert [(f.name, f.private_ip_address) for f in fes] == [("fe", "127.0.0.1")], fes
    assert network.load_balancer_frontend_ip_configurations.get(RG, "sdk-lb", "fe").name == "fe"
    try:
        network.load_balancer_probes.get(RG, "sdk-lb", "nope")
        raise AssertionError("GET of a missing probe succeeded")
    except ResourceNotFoundError:
        pass

    step("scale set (Manual upgrades, one instance: the SDK waits until it is provisioned)")
    vmss = compute.virtual_machine_scale_sets.begin_create_or_update(RG, "sdk", cm.VirtualMachineScaleSet(
        location="local",
        sku=cm.Sku(name="Standard_B1s", tier="Standard", capacity=1),
        upgrade_policy=cm.UpgradePolicy(mode="Manual", rolling_upgrade_policy=cm.RollingUpgradePolicy(
            max_batch_instance_percent=50, max_unhealthy_instance_percent=50,
            max_unhealthy_upgraded_instance_percent=20, pause_time_between_batches="PT0S")),
        virtual_machine_profile=cm.VirtualMachineScaleSetVMProfile(
            os_profile=cm.VirtualMachineScaleSetOSProfile(
                computer_name_prefix="sdk", admin_username="azureuser", admin_password="Sdk-Secret-123"),
            storage_profile=cm.VirtualMachineScaleSetStorageProfile(
                image_reference=cm.ImageReference(id=image_id(BOOT_IMAGE))),
            network_profile=cm.VirtualMachineScaleSetNetworkProfile(
                health_probe=cm.ApiEntityReference(id=lb_id + "/probes/http"),
                network_interface_configurations=[cm.VirtualMachineScaleSetNetworkConfiguration(
                    name="nic", primary=True, ip_configurations=[cm.VirtualMachineScaleSetIPConfiguration(
                        name="ip", load_balancer_backend_address_pools=[
                            cm.SubResource(id=lb_id + "/backendAddressPools/be")])])])),
    )).result()
    assert vmss.provisioning_state == "Succeeded", vmss
    assert vmss.sku.capacity == 1 and vmss.unique_id
    assert vmss.virtual_machine_profile.os_profile.admin_password is None  # a secret, never returned

    vmss_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/sdk"
    assert resources.resources.check_existence_by_id(vmss_id, api_version="2024-11-01")
    got = compute.virtual_machine_scale_sets.get(RG, "sdk")
    assert got.upgrade_policy.mode == "Manual"
    assert got.upgrade_policy.rolling_upgrade_policy.max_batch_instance_percent == 50
    assert got.virtual_machine_profile.storage_profile.image_reference.id == image_id(BOOT_IMAGE)
    assert [s.name for s in compute.virtual_machine_scale_sets.list(RG)] == ["sdk"]
    skus = list(compute.virtual_machine_scale_sets.list_skus(RG, "sdk"))
    assert "Standard_B1s" in [s.sku.name for s in skus], skus

    one_instance(compute)

    step("Rolling upgrades and a new image (PATCH); the SDK waits for the rolling upgrade")
    updated = compute.virtual_machine_scale_sets.begin_update(RG, "sdk", cm.VirtualMachineScaleSetUpdate(
        upgrade_policy=cm.UpgradePolicy(mode="Rolling"),
        virtual_machine_profile=cm.VirtualMachineScaleSetUpdateVMProfile(
            storage_profile=cm.VirtualMachineScaleSetUpdateStorageProfile(
                image_reference=cm.ImageReference(id=image_id("sdk-img2")))))).result()
    assert updated.virtual_machine_profile.storage_profile.image_reference.id == image_id("sdk-img2")
    assert updated.provisioning_state == "Succeeded", updated.provisioning_state
    assert updated.upgrade_policy.mode == "Rolling"
    assert updated.upgrade_policy.rolling_upgrade_policy.max_batch_instance_percent == 50
    polled("PATCH", "/virtualMachineScaleSets/sdk")
    latest = compute.virtual_machine_scale_set_rolling_upgrades.get_latest(RG, "sdk")
    assert latest.running_status.code == "Completed", latest.running_status

    view = compute.virtual_machine_scale_sets.get_instance_view(RG, "sdk")
    assert view.statuses[0].code == "ProvisioningState/succeeded", view.statuses

    step("rolling upgrade")
    compute.virtual_machine_scale_set_rolling_upgrades.begin_start_os_upgrade(RG, "sdk").result()
    assert polled("POST", "/osRollingUpgrade")[2] == 202
    latest = compute.virtual_machine_scale_set_rolling_upgrades.get_latest(RG, "sdk")
    assert latest.running_status.code == "Completed", latest.running_status
    assert latest.progress.failed_instance_count == 0
    assert latest.policy.max_batch_instance_percent == 50

    step("images")
    assert compute.images.get(RG, BOOT_IMAGE).name == BOOT_IMAGE
    assert {i.name for i in compute.images.list_by_resource_group(RG)} >= {BOOT_IMAGE, "sdk-img2"}

    step("errors")
    try:
        compute.virtual_machine_scale_sets.get(RG, "nope")
        raise AssertionError("GET of a missing scale set succeeded")
    except ResourceNotFoundError as e:
        assert e.error.code == "ResourceNotFound", e.error
    try:
        compute.virtual_machine_scale_sets.begin_create_or_update(RG, "bad", cm.VirtualMachineScaleSet(
            location="local", sku=cm.Sku(capacity=5000))).result()
        raise AssertionError("capacity 5000 was accepted")
    except HttpResponseError as e:
        assert e.status_code == 400 and e.error.code == "InvalidParameter", e

    try:
        resources.resources.get_by_id(vmss_id, api_version="2015-06-15")
        raise AssertionError("an api-version scale sets do not speak was accepted")
    except HttpResponseError as e:
        assert e.status_code == 400 and e.error.code == "NoRegisteredProviderFound", e

    step("scaleset export azure (checked against the specs by sdk.rs)")
    scaleset("export", "azure", "-g", RG, "--out", os.path.join(HOME, "export"))

    step("delete (the SDK waits until the scale set is gone, so the LB can go next)")
    compute.virtual_machine_scale_sets.begin_delete(RG, "sdk").result()
    assert polled("DELETE", "/virtualMachineScaleSets/sdk")[2] == 202
    try:
        compute.virtual_machine_scale_sets.get(RG, "sdk")
        raise AssertionError("the scale set is still there after its delete completed")
    except ResourceNotFoundError:
        pass
    network.load_balancers.begin_delete(RG, "sdk-lb").result()
    assert [l.name for l in network.load_balancers.list(RG)] == []
    compute.images.begin_delete(RG, BOOT_IMAGE).result()
    assert not resources.resources.check_existence_by_id(vmss_id, api_version="2024-11-01")
    with open(os.environ["SDK_EXCHANGES"], "w") as f:
        json.dump(EXCHANGES, f)
    print("SDK OK", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(1)
