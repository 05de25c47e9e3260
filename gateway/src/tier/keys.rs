//! The keys every gateway of a tier shares, from the store: sealed there by the
//! first gateway under the operator's cluster secret, opened by each gateway at
//! start. The secret stays in a file on each gateway host; the database holds only
//! sealed text.

use std::path::Path;

use anyhow::Context;
use russh::keys::PrivateKey;
use warren_keys::TokenSigner;
use warren_keys::cluster::{
    self, ClusterSecret, HOST_KEY_SLOT, TOKEN_SIGNER_SLOT, host_key_from_material,
    signer_from_material,
};
use warren_store::Store;

/// The SSH host key and the token signing key of the tier.
pub struct SharedKeys {
    pub host_key: PrivateKey,
    pub signer: std::sync::Arc<TokenSigner>,
}

impl std::fmt::Debug for SharedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKeys")
            .field(
                "host_key",
                &warren_keys::fingerprint(self.host_key.public_key()),
            )
            .finish_non_exhaustive()
    }
}

/// The opened key of `slot`: stored first if no gateway did (this gateway's own
/// key file in `data_dir` if it has one, else a fresh key; of two gateways
/// starting at once the first write wins and both read it back).
async fn shared_key(
    store: &Store,
    secret: &ClusterSecret,
    slot: &str,
    data_dir: &Path,
) -> anyhow::Result<Vec<u8>> {
    let sealed = match store.sealed_gateway_key(slot).await? {
        Some(sealed) => sealed,
        None => {
            let material = cluster::key_material(slot, data_dir)?;
            store
                .put_sealed_gateway_key_if_absent(slot, &secret.seal(slot, &material))
                .await?;
            tracing::info!(slot, "stored the tier's sealed key");
            store
                .sealed_gateway_key(slot)
                .await?
                .with_context(|| format!("the sealed {slot} vanished from the store"))?
        }
    };
    Ok(secret.open(slot, &sealed)?)
}

/// The tier's keys, from `store`, opened with `secret`. A wrong secret is an error
/// saying so, before anything listens.
pub async fn load(
    store: &Store,
    secret: &ClusterSecret,
    data_dir: &Path,
) -> anyhow::Result<SharedKeys> {
    let host_key =
        host_key_from_material(&shared_key(store, secret, HOST_KEY_SLOT, data_dir).await?)?;
    let signer =
        signer_from_material(&shared_key(store, secret, TOKEN_SIGNER_SLOT, data_dir).await?)?;
    Ok(SharedKeys {
        host_key,
        signer: std::sync::Arc::new(signer),
    })
}
