//! TenantService: create, get, list with paging.

use pii_vault::proto::v1 as pb;
use tonic::Code;

use crate::util::TestVault;

#[tokio::test]
async fn create_get_and_list_tenants() {
    let vault = TestVault::start().await;
    let mut client = vault.tenants().await;
    for i in 0..7 {
        let t = client
            .create_tenant(pb::CreateTenantRequest {
                tenant_id: format!("tenant-{i}"),
            })
            .await
            .expect("create")
            .into_inner();
        assert_eq!(t.tenant_id, format!("tenant-{i}"));
        assert_eq!(t.key_version, 1);
        assert!(t.created_at.is_some());
    }
    let again = client
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "tenant-3".into(),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(again.code(), Code::AlreadyExists);

    let got = client
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "tenant-5".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.tenant_id, "tenant-5");

    let missing = client
        .get_tenant(pb::GetTenantRequest {
            tenant_id: "nobody".into(),
        })
        .await
        .expect_err("unknown tenant");
    assert_eq!(missing.code(), Code::NotFound);

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_tenants(pb::ListTenantsRequest {
                page_size: 3,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(page.tenants.len() <= 3);
        seen.extend(page.tenants.into_iter().map(|t| t.tenant_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..7).map(|i| format!("tenant-{i}")).collect();
    assert_eq!(seen, expected);
}
