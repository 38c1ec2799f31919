//! RecordService: put and get every category, versions, delete, subject paging, NOT_FOUND.

use pii_vault::proto::v1 as pb;
use tonic::Code;

use crate::util::{create_tenant, get, put, text, text_of, TestVault};

const ALL_CATEGORIES: [pb::Category; 11] = [
    pb::Category::Account,
    pb::Category::Profile,
    pb::Category::Payment,
    pb::Category::Communication,
    pb::Category::Usage,
    pb::Category::Device,
    pb::Category::Log,
    pb::Category::Conversation,
    pb::Category::Model,
    pb::Category::Dataset,
    pb::Category::ApiCallMetadata,
];

#[tokio::test]
async fn a_field_of_every_category_round_trips() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    let fields: Vec<_> = ALL_CATEGORIES
        .iter()
        .enumerate()
        .map(|(i, c)| text(&format!("f{i:02}"), *c, &format!("value {i}")))
        .collect();
    let written = put(&mut client, "acme", "user-1", fields)
        .await
        .expect("put");
    assert_eq!(written.fields.len(), ALL_CATEGORIES.len());
    assert!(written.fields.iter().all(|f| f.version == 1));

    let got = get(&mut client, "acme", "user-1", &[])
        .await
        .expect("get all");
    assert_eq!(got.len(), ALL_CATEGORIES.len());
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f.name, format!("f{i:02}"));
        assert_eq!(f.category, ALL_CATEGORIES[i] as i32);
        assert_eq!(text_of(f), format!("value {i}"));
        assert_eq!(f.version, 1);
    }

    // Bytes values round-trip too.
    let bytes = pb::FieldInput {
        expected_version: None,
        indexed: false,
        ttl_seconds: 0,
        transaction_record: false,
        name: "avatar".into(),
        category: pb::Category::Profile as i32,
        value: Some(pb::Value {
            kind: Some(pb::value::Kind::Bytes(vec![0, 159, 146, 150, 255])),
        }),
    };
    put(&mut client, "acme", "user-1", vec![bytes])
        .await
        .expect("put bytes");
    let got = get(&mut client, "acme", "user-1", &["avatar"])
        .await
        .expect("get bytes");
    assert_eq!(
        got[0].value.as_ref().and_then(|v| v.kind.clone()),
        Some(pb::value::Kind::Bytes(vec![0, 159, 146, 150, 255]))
    );
}

#[tokio::test]
async fn overwrite_bumps_the_version_and_keeps_created_at() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    let email = |v: &str| text("email", pb::Category::Account, v);
    put(&mut client, "acme", "u", vec![email("a@example.com")])
        .await
        .expect("v1");
    let first = get(&mut client, "acme", "u", &["email"])
        .await
        .expect("get")[0]
        .clone();
    let written = put(&mut client, "acme", "u", vec![email("b@example.com")])
        .await
        .expect("v2");
    assert_eq!(written.fields[0].version, 2);
    put(&mut client, "acme", "u", vec![email("c@example.com")])
        .await
        .expect("v3");
    let now = get(&mut client, "acme", "u", &["email"])
        .await
        .expect("get")[0]
        .clone();
    assert_eq!(now.version, 3);
    assert_eq!(text_of(&now), "c@example.com");
    assert_eq!(now.created_at, first.created_at);
    let micros = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
    };
    assert!(
        micros(&now.updated_at) > micros(&first.updated_at),
        "updated_at moves forward"
    );
}

#[tokio::test]
async fn put_is_atomic_across_fields() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "u",
        vec![text("a", pb::Category::Account, "1")],
    )
    .await
    .expect("put");
    // The second field is invalid: nothing of the request may be written.
    let mut bad = text("b", pb::Category::Account, "2");
    bad.category = 0;
    let err = put(
        &mut client,
        "acme",
        "u",
        vec![text("a", pb::Category::Account, "changed"), bad],
    )
    .await
    .expect_err("invalid second field");
    assert_eq!(err.code(), Code::InvalidArgument);
    let got = get(&mut client, "acme", "u", &[]).await.expect("get");
    assert_eq!(got.len(), 1);
    assert_eq!(text_of(&got[0]), "1");
    assert_eq!(got[0].version, 1);
}

#[tokio::test]
async fn delete_removes_only_the_named_fields() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "u",
        vec![
            text("a", pb::Category::Account, "1"),
            text("b", pb::Category::Account, "2"),
            text("c", pb::Category::Account, "3"),
        ],
    )
    .await
    .expect("put");
    let deleted = client
        .delete_fields(pb::DeleteFieldsRequest {
            tenant_id: "acme".into(),
            subject_id: "u".into(),
            field_names: vec!["a".into(), "c".into(), "zzz".into()],
        })
        .await
        .expect("delete")
        .into_inner()
        .deleted;
    assert_eq!(deleted, 2);
    let got = get(&mut client, "acme", "u", &[]).await.expect("get");
    let names: Vec<_> = got.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["b"]);
    let gone = get(&mut client, "acme", "u", &["a"])
        .await
        .expect_err("deleted field");
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn list_subjects_pages_through_every_subject_once() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    create_tenant(&vault, "other").await;
    let mut client = vault.records().await;
    let mut expected = Vec::new();
    for i in 0..23 {
        let subject = format!("user-{i}");
        put(
            &mut client,
            "acme",
            &subject,
            vec![text("n", pb::Category::Profile, "x")],
        )
        .await
        .expect("put");
        expected.push(subject);
    }
    // A subject of another tenant must never show up.
    put(
        &mut client,
        "other",
        "intruder",
        vec![text("n", pb::Category::Profile, "x")],
    )
    .await
    .expect("put other");

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_subjects(pb::ListSubjectsRequest {
                tenant_id: "acme".into(),
                page_size: 10,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(page.subject_ids.len() <= 10);
        seen.extend(page.subject_ids);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn unknown_tenant_subject_or_field_is_not_found() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "u",
        vec![text("a", pb::Category::Account, "1")],
    )
    .await
    .expect("put");
    let cases = [
        ("nobody", "u", vec![]),
        ("acme", "ghost", vec![]),
        ("acme", "u", vec!["missing"]),
    ];
    for (tenant, subject, names) in cases {
        let err = get(&mut client, tenant, subject, &names)
            .await
            .expect_err("not found");
        assert_eq!(
            err.code(),
            Code::NotFound,
            "{tenant}/{subject}/{names:?}: {err:?}"
        );
    }
    let err = put(
        &mut client,
        "nobody",
        "u",
        vec![text("a", pb::Category::Account, "1")],
    )
    .await
    .expect_err("put to unknown tenant");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .list_subjects(pb::ListSubjectsRequest {
            tenant_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .expect_err("list unknown tenant");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn concurrent_first_writes_to_one_subject_all_land() {
    let vault = TestVault::start().await;
    create_tenant(&vault, "acme").await;
    let channel = vault.channel().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client =
            pii_vault::proto::v1::record_service_client::RecordServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            put(
                &mut client,
                "acme",
                "race",
                vec![text(
                    &format!("f{i:02}"),
                    pb::Category::Usage,
                    &format!("v{i}"),
                )],
            )
            .await
        }));
    }
    for t in tasks {
        t.await
            .expect("task")
            .expect("every concurrent put succeeds");
    }
    let mut client = vault.records().await;
    let got = get(&mut client, "acme", "race", &[]).await.expect("get");
    assert_eq!(got.len(), 16, "all fields written under one subject key");
    for (i, f) in got.iter().enumerate() {
        assert_eq!(text_of(f), format!("v{i}"));
    }
}
