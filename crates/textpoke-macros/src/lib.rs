//! Procedural macros for textpoke. Use them through `textpoke` (`textpoke::patchable`), which
//! re-exports them; this crate alone does nothing useful.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    Attribute, Block, FnArg, GenericParam, ImplItem, Item, ItemImpl, Pat, ReturnType, Signature,
    Type, Visibility, parse_macro_input,
};

/// Makes a function patchable: one 5-byte site at the start of its body that textpoke can turn
/// into a jump to its tracing hooks or to a replacement. See `textpoke::functions`.
///
/// On a free function, a method, or an `impl` block (every method in it; their names then
/// include the type's).
#[proc_macro_attribute]
pub fn patchable(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return error(
            TokenStream2::from(attr).span(),
            "#[textpoke::patchable] takes no arguments",
        )
        .into();
    }
    let item = parse_macro_input!(item as Item);
    match item {
        Item::Fn(f) => expand_fn(&f.attrs, &f.vis, &f.sig, &f.block, None).into(),
        Item::Impl(imp) => expand_impl(imp).into(),
        other => error(
            other.span(),
            "#[textpoke::patchable] goes on a function, a method or an impl block",
        )
        .into(),
    }
}

fn error(span: proc_macro2::Span, message: &str) -> TokenStream2 {
    quote_spanned!(span=> ::core::compile_error!(#message);)
}

fn expand_impl(mut imp: ItemImpl) -> TokenStream2 {
    let type_name = match &*imp.self_ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        other => other.to_token_stream().to_string().replace(' ', ""),
    };
    for item in &mut imp.items {
        if let ImplItem::Fn(f) = item {
            let expanded = expand_fn(&f.attrs, &f.vis, &f.sig, &f.block, Some(&type_name));
            *item = ImplItem::Verbatim(expanded);
        }
    }
    imp.into_token_stream()
}

/// Whether a signature mentions `Self` or `impl Trait`.
#[derive(Default)]
struct Mentions {
    self_type: bool,
    impl_trait: bool,
}

impl<'a> Visit<'a> for Mentions {
    fn visit_ident(&mut self, i: &'a proc_macro2::Ident) {
        if i == "Self" {
            self.self_type = true;
        }
    }
    fn visit_type_impl_trait(&mut self, _: &'a syn::TypeImplTrait) {
        self.impl_trait = true;
    }
}

fn expand_fn(
    attrs: &[Attribute],
    vis: &Visibility,
    sig: &Signature,
    block: &Block,
    type_name: Option<&str>,
) -> TokenStream2 {
    if let Some(c) = &sig.constness {
        return error(
            c.span(),
            "#[textpoke::patchable] cannot go on a `const fn`: it also runs at compile time, where \
             there is no code to patch",
        );
    }
    if let Some(a) = &sig.asyncness {
        return error(
            a.span(),
            "#[textpoke::patchable] cannot go on an `async fn`: its body runs when the future is \
             polled, not when it is called; make the function that creates the future patchable",
        );
    }
    if let Some(v) = &sig.variadic {
        return error(
            v.span(),
            "#[textpoke::patchable] cannot go on a variadic function",
        );
    }
    let mut mentions = Mentions::default();
    mentions.visit_signature(sig);
    let has_receiver = sig.receiver().is_some();
    let is_method = type_name.is_some() || has_receiver || mentions.self_type;
    let name = &sig.ident;
    let display = match type_name {
        Some(t) => format!("{t}::{name}"),
        None => name.to_string(),
    };

    // Parameters that are not plain names are renamed, and destructured at the top of the body,
    // so that the traced path can pass every argument on.
    let mut sig = sig.clone();
    let mut args = Vec::new();
    let mut lets = Vec::new();
    for (i, input) in sig.inputs.iter_mut().enumerate() {
        match input {
            FnArg::Receiver(_) => args.push(quote!(self)),
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                    let ident = &pi.ident;
                    args.push(quote!(#ident));
                }
                _ => {
                    let renamed = format_ident!("__textpoke_arg{}", i);
                    let pat = &pt.pat;
                    lets.push(quote!(let #pat = #renamed;));
                    args.push(quote!(#renamed));
                    *pt.pat = syn::parse_quote!(#renamed);
                }
            },
        }
    }

    let generic_args: Vec<TokenStream2> = sig
        .generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(t.ident.to_token_stream()),
            GenericParam::Const(c) => Some(c.ident.to_token_stream()),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    // `impl Trait` arguments cannot be named: such a function is called with its generic
    // arguments inferred, and cannot be replaced (its function pointer type is unnameable).
    let turbofish = if generic_args.is_empty() || mentions.impl_trait {
        quote!()
    } else {
        quote!(::<#(#generic_args),*>)
    };
    let path = if is_method {
        quote!(Self::#name #turbofish)
    } else {
        quote!(#name #turbofish)
    };

    let fn_ptr = (!mentions.impl_trait).then(|| {
        let unsafety = &sig.unsafety;
        let abi = &sig.abi;
        let types = sig.inputs.iter().map(|input| match input {
            FnArg::Receiver(r) => r.ty.to_token_stream(),
            FnArg::Typed(pt) => pt.ty.to_token_stream(),
        });
        let output = match &sig.output {
            ReturnType::Default => quote!(),
            ReturnType::Type(arrow, ty) => quote!(#arrow #ty),
        };
        quote!(#unsafety #abi fn(#(#types),*) #output)
    });
    // A function that returns nothing can be made a no-op from outside (`replace-noop`): the
    // arm below returns `()` for it, which only type-checks for such a function.
    let unit = sig.asyncness.is_none()
        && match &sig.output {
            ReturnType::Default => true,
            ReturnType::Type(_, ty) => matches!(&**ty, syn::Type::Tuple(t) if t.elems.is_empty()),
        };
    let noop_arm = (unit && fn_ptr.is_some()).then(|| {
        quote! {
            ::core::option::Option::Some(__textpoke_target)
                if __textpoke_target == ::textpoke::functions::__NOOP => {}
        }
    });
    let (record, replaced_arm, self_addr) = match &fn_ptr {
        Some(fn_ptr) => (
            quote!(::textpoke::__patchable_record!(__TEXTPOKE_FN, #path);),
            quote! {
                ::core::option::Option::Some(__textpoke_target) => {
                    // SAFETY: `__textpoke_target` was installed by `replace!` for this very
                    // instantiation (its address is compared with this function's), as a
                    // function pointer of exactly this type (`replace!` type-checks it).
                    let __textpoke_target = unsafe {
                        ::core::mem::transmute::<usize, #fn_ptr>(__textpoke_target)
                    };
                    // SAFETY: the caller of this function upheld what calling it requires, and
                    // the replacement has the same signature, `unsafe` included.
                    unsafe { __textpoke_target(#(#args),*) }
                }
            },
            quote!(#path as #fn_ptr as usize),
        ),
        None => (
            quote!(::textpoke::__patchable_record!(__TEXTPOKE_FN);),
            quote!(::core::option::Option::Some(_) => unsafe { #path(#(#args),*) },),
            quote!(0usize),
        ),
    };
    let stmts = &block.stmts;
    quote! {
        #(#attrs)*
        #[allow(unused_unsafe, clippy::let_unit_value)]
        #vis #sig {
            static __TEXTPOKE_KEY: ::textpoke::StaticKey = ::textpoke::StaticKey::new();
            static __TEXTPOKE_FN: ::textpoke::functions::FnMeta = ::textpoke::functions::FnMeta::__new(
                &__TEXTPOKE_KEY,
                ::core::concat!(::core::module_path!(), "::", #display),
                ::core::file!(),
                ::core::line!(),
                #unit,
            );
            #record
            if ::textpoke::static_branch_unlikely!(__TEXTPOKE_KEY) {
                if let ::core::option::Option::Some(__textpoke_call) =
                    ::textpoke::functions::__divert(&__TEXTPOKE_FN)
                {
                    return __textpoke_call.run(#self_addr, move |__textpoke_with| match __textpoke_with {
                        #noop_arm
                        #replaced_arm
                        // SAFETY: as for any call of this function by its caller.
                        ::core::option::Option::None => unsafe { #path(#(#args),*) },
                    });
                }
            }
            #(#lets)*
            #(#stmts)*
        }
    }
}
