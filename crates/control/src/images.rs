//! Image commands over the image store: get, list, and delete, which is refused while a scale
//! set's model or one of its instances uses the image. Images are made by baking or importing
//! (`scaleset image ...`), never by a PUT. Images belong to no resource group: the group in a
//! request only appears in messages.
use crate::commands::{check_name, not_found, CommandError, CommandResult};
use crate::{ControlPlane, Res, VmssDoc, IMAGE, VMSS};
use image::{Image, ImageStore};

fn internal(e: image::ImageError) -> CommandError {
    CommandError::Internal(e.to_string())
}

impl ControlPlane {
    /// Image `res.name`.
    pub fn image(&self, images: &ImageStore, res: &Res) -> CommandResult<Image> {
        check_name(IMAGE, res)?;
        images
            .get(&res.name)
            .map_err(internal)?
            .ok_or_else(|| not_found(IMAGE, res))
    }

    /// Every image, by name.
    pub fn list_images(&self, images: &ImageStore) -> CommandResult<Vec<Image>> {
        images.list().map_err(internal)
    }

    /// Why a PUT or PATCH of image `res.name` is refused: its name is invalid, else images are
    /// created by baking (both 400).
    pub fn put_image(&self, res: &Res) -> CommandError {
        if let Err(e) = check_name(IMAGE, res) {
            return e;
        }
        CommandError::Invalid {
            code: "OperationNotAllowed",
            message: "Images are created by baking: `scaleset image bake --base debian:bookworm --package DIR --script setupscript.sh --name NAME`.".into(),
        }
    }

    /// Deletes image `res.name`; false when it did not exist. Refused (409) while a scale set's
    /// model names it or one of its instances runs it.
    pub fn delete_image(&self, images: &ImageStore, res: &Res) -> CommandResult<bool> {
        check_name(IMAGE, res)?;
        if images.get(&res.name).map_err(internal)?.is_none() {
            return Ok(false);
        }
        for (k, v) in self.store.list(VMSS, None, None)? {
            let doc: VmssDoc =
                serde_json::from_value(v).map_err(|e| CommandError::Internal(e.to_string()))?;
            let in_model = model::vmss::parse(&doc.arm, &k.name)
                .ok()
                .and_then(|(m, _)| m.image)
                .is_some_and(|i| i.name == res.name);
            let on_instance = self.instances(&k)?.iter().any(|r| r.image == res.name);
            if in_model || on_instance {
                return Err(CommandError::Conflict {
                    code: "ImageInUse",
                    message: format!("Image '{}' is in use by virtual machine scale set '{}' and cannot be deleted.", res.name, k.name),
                });
            }
        }
        images.delete(&res.name).map_err(internal)?;
        Ok(true)
    }
}
