//! Micro-benchmarks of the protocol code on Entra ID's own request shapes:
//! filter parsing, PATCH application and rendering. `cargo bench` measures;
//! `cargo test --all-targets` runs each once as a smoke test.

use std::hint::black_box;

use chrono::NaiveDate;
use criterion::{Criterion, criterion_group, criterion_main};
use scimsync::scim::ResourceKind;
use scimsync::scim::filter::{parse_attr_path, parse_filter};
use scimsync::scim::patch::{apply_patch, parse_patch};
use scimsync::scim::render::{Meta, resource};
use scimsync::scim::resource::project;
use serde_json::{Value, json};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn user(n: usize) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
        "externalId": format!("0a21f0f2-8d2a-4f8e-97cb-{n:012}"),
        "userName": format!("user{n}@example.com"),
        "active": true,
        "displayName": format!("User {n}"),
        "title": "Engineer",
        "emails": [{"primary": true, "type": "work", "value": format!("user{n}@example.com")}],
        "name": {"formatted": format!("User {n}"), "familyName": "Example", "givenName": "User"},
        "addresses": [{"type": "work", "country": "NL", "locality": "Utrecht", "primary": false}],
        "phoneNumbers": [{"type": "work", "value": "+31 30 000 0000"}],
        ENTERPRISE: {"employeeNumber": format!("{n}"), "department": "R&D",
                     "manager": {"value": "a-manager-id"}}
    })
}

fn meta(id: &str) -> Meta<'_> {
    let at = NaiveDate::from_ymd_opt(2026, 11, 28)
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .expect("a valid time");
    Meta {
        kind: ResourceKind::User,
        id,
        created: at,
        last_modified: at,
        version: 3,
        base_url: "https://scim.example.com/scim/v2",
    }
}

fn filters(c: &mut Criterion) {
    let mut g = c.benchmark_group("filter parse");
    let cases = [
        ("userName eq", r#"userName eq "user42@example.com""#.to_owned()),
        ("externalId eq", r#"externalId eq "0a21f0f2-8d2a-4f8e-97cb-000000000042""#.to_owned()),
        (
            "compound",
            r#"emails[type eq "work" and value co "@example.com"] or (name.familyName sw "A" and not (active eq false))"#
                .to_owned(),
        ),
        (
            "50 terms",
            (0..50)
                .map(|n| format!(r#"userName eq "user{n}@example.com""#))
                .collect::<Vec<_>>()
                .join(" or "),
        ),
    ];
    for (name, text) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| parse_filter(black_box(text)).expect("parses"))
        });
    }
    g.finish();
}

fn patches(c: &mut Criterion) {
    let mut g = c.benchmark_group("PATCH apply");
    let stored = user(42);
    let replace = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Replace", "value": {"displayName": "Renamed", "title": "Lead",
                        "name.familyName": "Other", "active": "False"}}]
    });
    let manager = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Add", "path": format!("{ENTERPRISE}:manager"), "value": "another-id"}]
    });
    for (name, body) in [
        ("user replace, no path", &replace),
        ("enterprise manager", &manager),
    ] {
        let ops = parse_patch(body).expect("parses");
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut doc = stored.clone();
                apply_patch(ResourceKind::User, &mut doc, black_box(&ops)).expect("applies")
            })
        });
    }
    let group = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "displayName": "Engineering"
    });
    let add = |n: usize| {
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "Add", "path": "members",
                "value": (0..n).map(|i| json!({"value": format!("member-{i}")})).collect::<Vec<_>>()}]
        })
    };
    let remove = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "Remove", "path": "members[value eq \"member-7\"]"}]
    });
    for (name, body) in [
        ("add 1 member", add(1)),
        ("add 50 members", add(50)),
        ("remove a member by filter", remove),
    ] {
        let ops = parse_patch(&body).expect("parses");
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut doc = group.clone();
                apply_patch(ResourceKind::Group, &mut doc, black_box(&ops)).expect("applies")
            })
        });
    }
    g.finish();
}

fn rendering(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    let stored = user(42);
    g.bench_function("one user", |b| {
        b.iter(|| serde_json::to_vec(&resource(black_box(stored.clone()), &meta("an-id"))))
    });
    let page: Vec<Value> = (0..100).map(user).collect();
    g.bench_function("list of 100 users", |b| {
        b.iter(|| {
            let resources: Vec<Value> = page
                .iter()
                .map(|u| resource(u.clone(), &meta("an-id")))
                .collect();
            serde_json::to_vec(&json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                "totalResults": 100, "startIndex": 1, "itemsPerPage": 100,
                "Resources": resources
            }))
        })
    });
    let only = [parse_attr_path("userName").expect("path")];
    let without = [
        parse_attr_path("emails").expect("path"),
        parse_attr_path(ENTERPRISE).expect("path"),
    ];
    g.bench_function("attributes=userName", |b| {
        b.iter(|| {
            let mut doc = resource(stored.clone(), &meta("an-id"));
            project(ResourceKind::User, &mut doc, black_box(&only), &[]);
            doc
        })
    });
    g.bench_function("excludedAttributes=emails,enterprise", |b| {
        b.iter(|| {
            let mut doc = resource(stored.clone(), &meta("an-id"));
            project(ResourceKind::User, &mut doc, &[], black_box(&without));
            doc
        })
    });
    g.finish();
}

criterion_group!(benches, filters, patches, rendering);
criterion_main!(benches);
