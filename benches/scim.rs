//! Micro-benchmarks of the SCIM protocol code on the requests Microsoft
//! Entra ID sends (docs/entra.md §2): reading request bodies, filter parsing,
//! PATCH parsing and application, rendering and projection. `cargo bench --bench scim`
//! measures; `cargo test --all-targets` runs each routine once as a smoke
//! test.
//!
//! Inputs go through the same functions as a request: stored documents come
//! from `validate_resource` on Entra's POST bodies and are rendered from
//! their stored JSON text, as the store hands them over.

use std::hint::black_box;

use chrono::{NaiveDate, NaiveDateTime};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use scimsync::scim::ResourceKind;
use scimsync::scim::body::parse_body;
use scimsync::scim::filter::{
    MAX_FILTER_DEPTH, MAX_FILTER_LEN, MAX_FILTER_TERMS, parse_attr_path, parse_filter,
    validate_filter,
};
use scimsync::scim::patch::{MemberChange, apply_patch, check_patch, parse_patch};
use scimsync::scim::render::{Meta, resource};
use scimsync::scim::resource::{MAX_MEMBER_IDS, project, validate_resource};
use scimsync::scim::schema::{ENTERPRISE_USER_SCHEMA, LIST_RESPONSE_SCHEMA, PATCH_OP_SCHEMA};
use serde_json::{Value, json};

const BASE_URL: &str = "https://scim.example.com/scim/v2";

/// A user as Entra ID creates one (docs/entra.md §2.2) with the enterprise
/// attributes an OpsLevel-style mapping sends, as sent.
fn entra_user(n: usize) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE_USER_SCHEMA],
        "externalId": format!("0a21f0f2-8d2a-4f8e-bf98-{n:012}"),
        "userName": format!("Test_User_{n:08}-bb11-cc22-dd33-44ee44ee44ee@example.com"),
        "active": true,
        "displayName": format!("Adele Vance {n}"),
        "title": "Retail Manager",
        "emails": [{"primary": true, "type": "work",
                    "value": format!("Test_User_{n:08}-bb11-cc22-dd33-44ee44ee44ee@example.com")}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Adele Vance", "familyName": "Vance", "givenName": "Adele"},
        "addresses": [{"type": "work", "formatted": "18/2111", "locality": "Utrecht",
                       "country": "NL", "primary": false}],
        "phoneNumbers": [{"type": "work", "value": "+31 30 000 0000"}],
        "roles": [],
        ENTERPRISE_USER_SCHEMA: {
            "employeeNumber": format!("{n}"),
            "department": "Retail",
            "manager": {"value": "5d48a0a8-e9f0-4aa3-8008-3c6f0f0f0f0f"}
        }
    })
}

/// [`entra_user`] normalised as stored.
fn stored_user(n: usize) -> Value {
    validate_resource(ResourceKind::User, entra_user(n)).expect("Entra's user body is valid")
}

/// A group as Entra ID creates one (docs/entra.md §2.7), normalised as stored.
fn stored_group() -> Value {
    let body = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group",
                    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
        "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
        "displayName": "Retail",
        "meta": {"resourceType": "Group"}
    });
    let mut group = validate_resource(ResourceKind::Group, body).expect("Entra's group is valid");
    // The store keeps members in their own table, not in the document.
    if let Some(obj) = group.as_object_mut() {
        obj.remove("members");
    }
    group
}

/// A target-side user id, as `POST /Users` assigns them.
fn user_id(n: usize) -> String {
    format!("7f4bc1a3-285e-48ae-8202-{n:012}")
}

fn meta_time() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 11, 28)
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .expect("a valid time")
}

fn user_meta(id: &str) -> Meta<'_> {
    Meta {
        kind: ResourceKind::User,
        id,
        created: meta_time(),
        last_modified: meta_time(),
        version: 3,
        base_url: BASE_URL,
    }
}

/// The largest filter the parser accepts: exactly [`MAX_FILTER_LEN`] bytes,
/// [`MAX_FILTER_TERMS`] `userName eq` comparisons joined by `or`, inside
/// [`MAX_FILTER_DEPTH`] parentheses.
fn largest_filter() -> String {
    let open = "(".repeat(MAX_FILTER_DEPTH);
    let close = ")".repeat(MAX_FILTER_DEPTH);
    let term = |n: usize, pad: usize| {
        format!(
            r#"userName eq "Test_User_{n:02}{}@example.com""#,
            "x".repeat(pad)
        )
    };
    let build = |pads: &[usize]| {
        let terms: Vec<String> = pads.iter().enumerate().map(|(n, p)| term(n, *p)).collect();
        format!("{open}{}{close}", terms.join(" or "))
    };
    // Spread the bytes left over evenly, the remainder on the first terms.
    let bare = build(&[0; MAX_FILTER_TERMS]).len();
    let spare = MAX_FILTER_LEN.checked_sub(bare).expect("the terms fit");
    let pads: Vec<usize> = (0..MAX_FILTER_TERMS)
        .map(|i| spare / MAX_FILTER_TERMS + usize::from(i < spare % MAX_FILTER_TERMS))
        .collect();
    let filter = build(&pads);
    assert_eq!(filter.len(), MAX_FILTER_LEN);
    parse_filter(&filter).expect("the largest filter is within the limits");
    filter
}

fn filters(c: &mut Criterion) {
    let mut g = c.benchmark_group("filter");
    let cases = [
        (
            "userName eq",
            r#"userName eq "Test_User_00aa00aa-bb11-cc22-dd33-44ee44ee44ee""#.to_owned(),
        ),
        (
            "externalId eq",
            r#"externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef""#.to_owned(),
        ),
        (
            "compound",
            r#"emails[type eq "work" and value co "@example.com"] or (name.familyName sw "A" and not (active eq false))"#
                .to_owned(),
        ),
        ("largest allowed", largest_filter()),
    ];
    for (name, text) in &cases {
        g.bench_function(format!("parse {name}"), |b| {
            b.iter(|| parse_filter(black_box(text)).expect("parses"))
        });
    }
    // What a list request pays: parse, then check the names against the
    // schema (the HTTP layer does both).
    for (name, text) in [&cases[0], &cases[3]] {
        g.bench_function(format!("parse+validate {name}"), |b| {
            b.iter(|| {
                let f = parse_filter(black_box(text)).expect("parses");
                validate_filter(&f, ResourceKind::User).expect("valid");
                f
            })
        });
    }
    g.finish();
}

fn patch_body(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP_SCHEMA], "Operations": ops})
}

/// `Add` of `n` members in one operation, as Entra ID batches them.
fn add_members(n: usize) -> Value {
    let members: Vec<Value> = (0..n)
        .map(|i| json!({"$ref": null, "value": user_id(i)}))
        .collect();
    patch_body(json!([{"op": "Add", "path": "members", "value": members}]))
}

/// Parses and applies a PATCH body to a copy of `stored`, as the worker
/// does (the copy is made outside the measured time), and parses and
/// checks it without the stored resource, as ingest does.
fn bench_patch(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    kind: ResourceKind,
    stored: &Value,
    body: &Value,
) -> Vec<MemberChange> {
    let mut check = stored.clone();
    let ops = parse_patch(body).expect("Entra's PATCH parses");
    let changes = apply_patch(kind, &mut check, &ops).expect("Entra's PATCH applies");
    g.bench_function(format!("{name}: parse+apply (worker)"), |b| {
        b.iter_batched(
            || stored.clone(),
            |mut doc| {
                let ops = parse_patch(black_box(body)).expect("parses");
                apply_patch(kind, &mut doc, &ops).expect("applies");
                doc
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function(format!("{name}: parse+check (ingest)"), |b| {
        b.iter(|| {
            let ops = parse_patch(black_box(body)).expect("parses");
            check_patch(kind, &ops).expect("passes")
        })
    });
    changes
}

fn patches(c: &mut Criterion) {
    let mut g = c.benchmark_group("PATCH");
    let user = stored_user(42);
    // With aadOptscim062020 (docs/entra.md §2.4): the filtered e-mail op keeps
    // its path, the rest collapse into one path-less replace.
    let replace = patch_body(json!([
        {"op": "replace", "path": "emails[type eq \"work\"].value",
         "value": "TestMhvaes@example.com"},
        {"op": "replace", "value": {
            "displayName": "Bjfe",
            "name.givenName": "Kkom",
            "name.familyName": "Unua",
            format!("{ENTERPRISE_USER_SCHEMA}:employeeNumber"): "Aklq"}}
    ]));
    bench_patch(
        &mut g,
        "user replace, no path",
        ResourceKind::User,
        &user,
        &replace,
    );
    // The manager as a bare id string (docs/entra.md §2.4 "Manager").
    let manager = patch_body(json!([
        {"op": "Add", "path": format!("{ENTERPRISE_USER_SCHEMA}:manager"),
         "value": user_id(271)}
    ]));
    bench_patch(
        &mut g,
        "enterprise manager",
        ResourceKind::User,
        &user,
        &manager,
    );

    let group = stored_group();
    for n in [1, 50, MAX_MEMBER_IDS] {
        let changes = bench_patch(
            &mut g,
            &format!("group add {n} member{}", if n == 1 { "" } else { "s" }),
            ResourceKind::Group,
            &group,
            &add_members(n),
        );
        assert!(matches!(&changes[..], [MemberChange::Add(ids)] if ids.len() == n));
    }
    let remove = patch_body(json!([
        {"op": "remove", "path": format!("members[value eq \"{}\"]", user_id(7))}
    ]));
    let changes = bench_patch(
        &mut g,
        "group remove members[value eq]",
        ResourceKind::Group,
        &group,
        &remove,
    );
    assert_eq!(changes, [MemberChange::Remove(vec![user_id(7)])]);
    g.finish();
}

/// What a GET answers from a stored row: parse the stored text, add `id`
/// and `meta`, serialize.
fn render_user(text: &str, id: &str) -> Value {
    let stored: Value = serde_json::from_str(text).expect("stored JSON");
    resource(stored, &user_meta(id))
}

fn rendering(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    let text = serde_json::to_string(&stored_user(42)).expect("serializes");
    let id = user_id(42);
    g.bench_function("one user", |b| {
        b.iter(|| serde_json::to_vec(&render_user(black_box(&text), &id)).expect("serializes"))
    });

    let page: Vec<(String, String)> = (0..100)
        .map(|n| {
            let text = serde_json::to_string(&stored_user(n)).expect("serializes");
            (text, user_id(n))
        })
        .collect();
    g.bench_function("ListResponse of 100 users", |b| {
        b.iter(|| {
            let resources: Vec<Value> = black_box(&page)
                .iter()
                .map(|(text, id)| render_user(text, id))
                .collect();
            let body = json!({
                "schemas": [LIST_RESPONSE_SCHEMA],
                "totalResults": 100,
                "startIndex": 1,
                "itemsPerPage": resources.len(),
                "Resources": resources,
            });
            serde_json::to_vec(&body).expect("serializes")
        })
    });

    // Projection alone, on an already rendered user.
    let rendered = render_user(&text, &id);
    let only = [parse_attr_path("userName").expect("path")];
    let without = [
        parse_attr_path("emails").expect("path"),
        parse_attr_path(ENTERPRISE_USER_SCHEMA).expect("path"),
    ];
    g.bench_function("project attributes=userName", |b| {
        b.iter_batched(
            || rendered.clone(),
            |mut doc| {
                project(ResourceKind::User, &mut doc, black_box(&only), &[]);
                doc
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("project excludedAttributes=emails,enterprise", |b| {
        b.iter_batched(
            || rendered.clone(),
            |mut doc| {
                project(ResourceKind::User, &mut doc, &[], black_box(&without));
                doc
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Reading request bodies as they arrive, before any validation: every
/// write pays this.
fn bodies(c: &mut Criterion) {
    let mut g = c.benchmark_group("body");
    let cases = [
        ("POST /Users".to_owned(), entra_user(42)),
        (
            "PATCH replace".to_owned(),
            patch_body(json!([
                {"op": "Replace", "path": "emails[type eq \"work\"].value",
                 "value": "TestMhvaes@example.com"},
                {"op": "Replace", "path": "active", "value": "False"}
            ])),
        ),
        (
            format!("PATCH add {MAX_MEMBER_IDS} members"),
            add_members(MAX_MEMBER_IDS),
        ),
    ];
    for (name, body) in &cases {
        let bytes = serde_json::to_vec(body).expect("serializes");
        // serde_json alone, for reference: what the checks cost is the
        // difference.
        g.bench_function(format!("serde_json {name}"), |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&bytes)).expect("parses"))
        });
        g.bench_function(format!("parse_body {name}"), |b| {
            b.iter(|| parse_body(black_box(&bytes)).expect("parses"))
        });
    }
    g.finish();
}

criterion_group!(benches, filters, patches, rendering, bodies);
criterion_main!(benches);
