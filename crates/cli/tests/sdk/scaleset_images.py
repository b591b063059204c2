"""Images for the SDK tests without baking: a one-file `docker save` archive that
`scaleset image import` takes (images are baked or imported, never PUT)."""
import hashlib
import io
import json
import tarfile


def docker_save(path, name):
    """A one-file `docker save` archive: images are baked or imported, never PUT."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as t:
        data = f"image {name}\n".encode()
        info = tarfile.TarInfo("etc/scaleset-image")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    layer = layer_buf.getvalue()
    cfg = {"architecture": "amd64", "os": "linux",
           "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}
    manifest = [{"Config": "cfg.json", "RepoTags": [name + ":1"], "Layers": ["l/layer.tar"]}]
    with tarfile.open(path, mode="w") as t:
        for member, data in [("manifest.json", json.dumps(manifest).encode()),
                             ("cfg.json", json.dumps(cfg).encode()), ("l/layer.tar", layer)]:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
